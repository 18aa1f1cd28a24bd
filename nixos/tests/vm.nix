# NixOS VM test (checks.<system>.vm): boots a VM with the module, breaks a unit and checks
# that it is restarted in auto-safe and queued in suggest, and that polkit holds the
# daemon's user to what it may do. Needs nixpkgs and KVM: `nix flake check` or
# `nix build .#checks.x86_64-linux.vm -L`.
{ self }:
{ ... }:
let
  asUser = "setpriv --reuid=macha-autonomous --regid=macha-autonomous --clear-groups --";
  # one line: it is spliced into Python string literals in the test script
  busctl =
    method: unit:
    "${asUser} busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1"
    + " org.freedesktop.systemd1.Manager ${method} ss ${unit} replace";
in
{
  name = "macha-autonomous";

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];

      services.macha-autonomous = {
        enable = true;
        autonomyLevel = "auto-safe";
        checkInterval = 5;
        analysis = "runbooks-only";
        settings.llm_enabled = false;
      };

      # the unit the test breaks: killed, it stays failed (no Restart=)
      systemd.services.broken = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
      };

      specialisation.suggest.configuration = {
        services.macha-autonomous.autonomyLevel = lib.mkForce "suggest";
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];
      virtualisation.memorySize = 1024;
    };

  testScript = ''
    import json

    machine.wait_for_unit("macha-autonomous.service")
    machine.wait_for_unit("broken.service")
    machine.wait_until_succeeds("curl -sf http://127.0.0.1:9847/healthz", timeout=60)
    machine.succeed("curl -sf http://127.0.0.1:9847/metrics | grep -q '^macha_'")

    with subtest("the daemon runs unprivileged, hardened"):
        user = machine.succeed("systemctl show -p User --value macha-autonomous.service").strip()
        assert user == "macha-autonomous", user
        machine.succeed("test -d /var/lib/macha-autonomous")
        print(machine.succeed("systemd-analyze security macha-autonomous.service | tail -1"))

    with subtest("the webhook takes alerts only with the token the daemon generated"):
        machine.succeed(
            "stat -c '%a %U' /var/lib/macha-autonomous/webhook.token | grep -qx '600 macha-autonomous'"
        )
        post = "curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' http://127.0.0.1:9847/alerts"
        assert machine.succeed(post).strip() == "401"
        machine.succeed("macha-obs webhook-token | grep -qx /var/lib/macha-autonomous/webhook.token")

    with subtest("polkit: non-protected units and the verbs it uses, nothing more"):
        machine.succeed("${busctl "RestartUnit" "broken.service"}")
        machine.fail("${busctl "StopUnit" "broken.service"}")
        machine.fail("${busctl "RestartUnit" "systemd-journald.service"}")
        machine.fail("${busctl "RestartUnit" "macha-autonomous.service"}")
        machine.fail("${busctl "StartUnit" "macha-autonomous-privileged@rm-rf.service"}")
        for instance in ("journal-vacuum-100M", "nix-gc"):
            unit = f"macha-autonomous-privileged@{instance}.service"
            machine.succeed(f"${asUser} busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1"
                            f" org.freedesktop.systemd1.Manager StartUnit ss {unit} replace")
            machine.wait_until_succeeds(
                f"systemctl show -p ActiveState --value {unit} | grep -qx inactive", timeout=300
            )
            machine.succeed(f"systemctl show -p Result --value {unit} | grep -qx success")
        machine.wait_for_unit("broken.service")

    with subtest("auto-safe: a failed unit is restarted"):
        # the daemon may restart it before anyone sees it failed: a new MainPID says it did
        old = machine.succeed("systemctl show -p MainPID --value broken.service").strip()
        machine.succeed("systemctl kill --signal=SIGKILL broken.service")
        machine.wait_until_succeeds(
            "systemctl is-active broken.service"
            f" && [ \"$(systemctl show -p MainPID --value broken.service)\" != {old} ]",
            timeout=120,
        )
        machine.succeed("grep -q broken.service /var/lib/macha-autonomous/actions.jsonl")

    with subtest("suggest: the same failure is queued, not acted on"):
        machine.succeed(
            "/run/current-system/specialisation/suggest/bin/switch-to-configuration test"
        )
        machine.wait_until_succeeds(
            "grep -q 'autonomy_level = \"suggest\"' /etc/macha-obs/config.toml", timeout=30
        )
        machine.wait_for_unit("macha-autonomous.service")
        machine.succeed("systemctl kill --signal=SIGKILL broken.service")
        machine.wait_until_succeeds(
            "macha-approve list --json"
            " | jq -e 'map(select(.action.unit == \"broken.service\")) | length > 0'",
            timeout=120,
        )
        machine.succeed("systemctl is-failed broken.service")
        queued = json.loads(machine.succeed("macha-approve list --json"))
        item = next(a for a in queued if a["action"].get("unit") == "broken.service")
        machine.succeed(f"macha-approve approve {item['id']}")
        machine.wait_until_succeeds("systemctl is-active broken.service", timeout=60)

    with subtest("the CLI tools use the service's config and state"):
        machine.succeed("macha-obs config show | grep -q 'state_dir = \"/var/lib/macha-autonomous\"'")
        machine.succeed("macha-logs actions -n 5")
        # each wrapper is its own console script: macha-check takes macha-check's options
        machine.succeed("macha-check --autonomy-level observe | grep -q '^findings: '")
        machine.succeed("stat -c %U /var/lib/macha-autonomous/state.db | grep -qx macha-autonomous")
  '';
}
