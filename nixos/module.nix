# services.macha-autonomous: the macha-obs sidecar as a NixOS service, least privilege.
#
# The daemon runs as its own system user with no capabilities and a read-only view of
# the system. It manages units over D-Bus only as far as the polkit rule below lets it,
# and asks for root actions (nix gc, nixos-rebuild, journal vacuum) by starting one
# instance of a privileged oneshot template whose instance name is the typed argument.
# docs/nixos.md explains the trade-offs.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    types
    ;

  cfg = config.services.macha-autonomous;
  inherit (config.services) prometheus grafana;
  inherit (config.services.prometheus) alertmanager;
  pure = import ./lib.nix;
  inherit (pure) names;

  toml = pkgs.formats.toml { };
  configPath = "/etc/${names.configFile}";
  settingsFile = toml.generate "macha-obs.toml" (pure.renderConfig cfg // backupSettings);

  # posture: backups. The units NixOS's restic and borgbackup modules make of the user's
  # jobs, where this system has those modules (`options ?`: the module evaluates without
  # them), added to the user's own backup_units or else the daemon's default globs.
  resticJobs =
    if options ? services.restic.backups then builtins.attrNames config.services.restic.backups else [ ];
  borgJobs =
    if options ? services.borgbackup.jobs then builtins.attrNames config.services.borgbackup.jobs else [ ];
  backupJobUnits =
    map (n: "restic-backups-${n}.service") resticJobs
    ++ map (n: "borgbackup-job-${n}.service") borgJobs;
  backupSettings = lib.optionalAttrs (backupJobUnits != [ ]) {
    backup_units = lib.unique ((cfg.settings.backup_units or pure.defaultBackupUnits) ++ backupJobUnits);
  };

  hostname =
    if cfg.settings ? hostname then cfg.settings.hostname else config.networking.hostName;
  scrapeTarget = pure.scrapeAddress cfg.listenAddress cfg.port;
  tokenCredential = "macha-webhook-token";
  loopback = builtins.elem cfg.listenAddress [
    "127.0.0.1"
    "::1"
    "localhost"
  ];
  # DESIGN.md invariant 13: the webhook takes a bearer token unless settings.webhook_auth
  # is false (an explicit opt-out the daemon refuses beyond loopback)
  webhookAuth = cfg.webhookTokenFile != null || (cfg.settings.webhook_auth or true);
  # what Alertmanager's LoadCredential= copies: the operator's file, or the token the
  # daemon generates in its state directory (0600, its own user's) before READY=1
  tokenSource = if cfg.webhookTokenFile != null then cfg.webhookTokenFile else names.generatedToken;

  alertmanagerReceiver = {
    name = "macha-autonomous";
    webhook_configs = [
      (
        {
          url = "http://${scrapeTarget}/alerts";
          send_resolved = true;
          max_alerts = 50;
        }
        // lib.optionalAttrs webhookAuth {
          http_config.authorization = {
            type = "Bearer";
            credentials_file = "/run/credentials/alertmanager.service/${tokenCredential}";
          };
        }
      )
    ];
  };
  alertmanagerRoute = {
    receiver = alertmanagerReceiver.name;
    # the sidecar's own health (audience=human) is for people, not for itself to heal
    matchers = [
      "instance=\"${hostname}\""
      "audience!=\"human\""
    ];
    group_by = [
      "alertname"
      "instance"
      "unit"
    ];
    group_wait = "10s";
    group_interval = "1m";
    repeat_interval = "4h";
    continue = true;
  };

  # Push for a fleet: one receiver and route per host of alertmanager.fleetHosts, matched
  # on its `instance` label (the host's name, as its scrape job sets it), on the
  # Alertmanager this host runs. Each host's token reaches Alertmanager as a credential.
  fleetCredential = host: "macha-fleet-${host.name}";
  fleetReceiver =
    host:
    {
      name = "macha-${host.name}";
      webhook_configs = [
        (
          {
            url = "${lib.removeSuffix "/" host.url}/alerts";
            send_resolved = true;
            max_alerts = 50;
          }
          // lib.optionalAttrs ((host.tokenFile or null) != null) {
            http_config.authorization = {
              type = "Bearer";
              credentials_file = "/run/credentials/alertmanager.service/${fleetCredential host}";
            };
          }
        )
      ];
    };
  fleetRoute =
    host:
    alertmanagerRoute
    // {
      receiver = "macha-${host.name}";
      matchers = [
        "instance=\"${host.name}\""
        "audience!=\"human\""
      ];
    };
  fleetHosts = cfg.alertmanager.fleetHosts;
  fleetReceivers = map fleetReceiver fleetHosts;
  fleetRoutes = map fleetRoute fleetHosts;
  fleetTokens = builtins.filter (h: (h.tokenFile or null) != null) fleetHosts;

  # With alertmanager.enable and no configuration of the user's own, the whole
  # Alertmanager configuration: what is for people (audience="human": approvals waiting,
  # the sidecar down or stuck; and every alert that is not this host's) goes to the
  # receiver the user names, what the sidecar can act on to the sidecar.
  human =
    if cfg.alertmanager.humanReceiver == null then
      null
    else
      cfg.alertmanager.humanReceiver // { name = cfg.alertmanager.humanReceiver.name or "human"; };
  defaultAlertmanagerConfiguration = {
    route = {
      receiver = if human == null then alertmanagerReceiver.name else human.name;
      group_by = [
        "alertname"
        "instance"
      ];
      routes = [ alertmanagerRoute ] ++ fleetRoutes;
    };
    receivers = lib.optional (human != null) human ++ [ alertmanagerReceiver ] ++ fleetReceivers;
  };
  ownAlertmanagerConfiguration =
    alertmanager.configText != null || alertmanager.configuration != defaultAlertmanagerConfiguration;

  # The alert rules, rendered from the same config file the daemon reads: a threshold
  # changed in `settings` changes the rule that fires (alert_rules/ is the rendering of
  # the defaults).
  rules = pkgs.runCommand "macha-obs-rules" { } ''
    ${cfg.package}/bin/macha-obs --config ${settingsFile} rules render $out
  '';

  # `model` is pulled into Ollama only when the user set it: the default names a model of
  # about 40 GB, which nobody should download by accident.
  modelNamed = options.services.macha-autonomous.model.highestPrio < (lib.mkOptionDefault { }).priority;

  # The CLI tools on PATH: run as root (sudo), they drop to the service user, so they read
  # the service's state with the daemon's rights and never leave root-owned files in it.
  tool =
    name: argv:
    pkgs.writeShellScriptBin name ''
      if [ "$(${pkgs.coreutils}/bin/id -u)" = 0 ]; then
        exec ${lib.getBin pkgs.util-linux}/bin/setpriv --reuid=${names.user} --regid=${names.user} \
          --init-groups --inh-caps=-all --no-new-privs -- ${argv} "$@"
      fi
      exec ${argv} "$@"
    '';
  tools = [
    (tool "macha-obs" "${cfg.package}/bin/macha-obs")
    (tool "macha-approve" "${cfg.package}/bin/macha-approve")
    (tool "macha-logs" "${cfg.package}/bin/macha-logs")
    (tool "macha-check" "${cfg.package}/bin/macha-check")
  ];
in
{
  options.services.macha-autonomous = {
    enable = mkEnableOption "the macha-obs self-healing sidecar";

    # like lib.mkPackageOption, with a fallback: without the flake's overlays.default,
    # pkgs has no macha-obs and the package is built from the module's own checkout
    package = mkOption {
      type = types.package;
      default = pkgs.macha-obs or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.macha-obs or (pkgs.callPackage ./nixos/package.nix { })";
      description = ''
        The macha-obs package: `pkgs.macha-obs` when the flake's `overlays.default` is
        applied, otherwise built from this checkout (`nixos/package.nix`).
      '';
    };

    autonomyLevel = mkOption {
      type = types.enum [
        "observe"
        "suggest"
        "auto-safe"
        "auto-full"
      ];
      default = "suggest";
      description = ''
        What the sidecar may do by itself: `observe` acts on nothing, `suggest` queues
        every action for `macha-approve`, `auto-safe` runs low-risk actions, `auto-full`
        low and medium. Protected units are never acted on.
      '';
    };

    checkInterval = mkOption {
      type = types.numbers.between 1 86400;
      default = 300;
      description = "Seconds between check cycles.";
    };

    model = mkOption {
      type = types.strMatching ".{1,200}";
      default = "llama3.1:70b";
      description = ''
        The LLM model name. With `ollama.enable`, Ollama pulls it only when you set this
        option yourself: the default is never downloaded by the module.
      '';
    };

    ollamaUrl = mkOption {
      type = types.strMatching "https?://.+";
      default = "http://127.0.0.1:11434";
      description = "Base URL of the Ollama API.";
    };

    analysis = mkOption {
      type = types.enum [
        "runbooks-first"
        "llm-first"
        "runbooks-only"
      ];
      default = "runbooks-first";
      description = "Whether deterministic runbooks or the LLM decide first.";
    };

    protectedUnits = mkOption {
      type = types.listOf (types.strMatching "[^/[:space:]]+");
      default = [ ];
      example = [
        "postgresql.service"
        "k3s*.service"
      ];
      description = ''
        Unit names or globs (fnmatch, over the whole unit name) never acted on, in
        addition to the built-ins (SSH, networking, D-Bus, journald, logind, systemd's
        own units, nix-daemon, the sidecar itself), which cannot be removed.
      '';
    };

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address of the listener for /metrics, POST /alerts and /healthz.";
    };

    port = mkOption {
      type = types.port;
      default = 9847;
      description = "Port of the listener.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open `port` in the firewall, for a Prometheus or Alertmanager on another host (the
        fleet case). Also set `listenAddress` to an address they can reach.
      '';
    };

    webhookTokenFile = mkOption {
      type = types.nullOr (types.strMatching "/.+");
      default = null;
      example = "/run/secrets/macha-webhook-token";
      description = ''
        Absolute path of a file holding the bearer token Alertmanager must send to
        POST /alerts. Give it as a string: the file stays where it is (root-only is fine,
        systemd hands the daemon and Alertmanager a copy) and never enters the Nix store.
        Null (the default): the daemon generates a token in
        /var/lib/macha-autonomous/webhook.token (0600) when it first starts, and
        `alertmanager.enable` hands Alertmanager a copy of that.
      '';
    };

    maxActionsPerHour = mkOption {
      type = types.ints.between 0 10000;
      default = 10;
      description = "Actions the sidecar may take per hour in all.";
    };

    maxActionsPerTargetPerHour = mkOption {
      type = types.ints.between 0 1000;
      default = 3;
      description = "Actions the sidecar may take per hour on one unit or target.";
    };

    memoryMax = mkOption {
      type = types.str;
      default = "512M";
      description = "The daemon's MemoryMax= (systemd resource control).";
    };

    settings = mkOption {
      type = types.submodule { freeformType = toml.type; };
      default = { };
      example = {
        nixos_flake = "/etc/nixos#myhost";
        dns_names = [ "nixos.org" ];
      };
      description = ''
        Any other setting of macha-obs's config model, by its TOML key (see
        `macha-obs config show`). Rendered with the options above to
        /etc/macha-obs/config.toml.
      '';
    };

    mcp.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        The MCP server at /mcp on the listener (an assistant's door: read-only tools,
        proposals through the policy, approvals only with a person's confirmation). It
        takes the webhook's token (or `settings.mcp_token_file`); `macha-obs mcp` serves
        the same tools over stdio, e.g. over SSH. docs/mcp.md shows client configurations.
      '';
    };

    prometheus.enable = mkEnableOption "the scrape job and the alert rules in services.prometheus";
    alertmanager.enable = mkEnableOption "the webhook receiver and route in services.prometheus.alertmanager";
    grafana.enable = mkEnableOption "the dashboards in services.grafana's provisioning";
    ollama.enable = mkEnableOption "services.ollama on 127.0.0.1 (by default), pulling `model` only when you set it";

    alertmanager.humanReceiver = mkOption {
      type = types.nullOr (types.attrsOf types.anything);
      default = null;
      example = lib.literalExpression ''
        {
          name = "admin";
          email_configs = [
            {
              to = "admin@example.org";
              from = "alertmanager@myhost.example.org";
              smarthost = "smtp.example.org:587";
              auth_username = "alertmanager@myhost.example.org";
              auth_password_file = "/run/secrets/smtp-password";
            }
          ];
        }
      '';
      description = ''
        An Alertmanager receiver that reaches a person (`email_configs`, `webhook_configs`,
        …; `name` defaults to "human"). Required with `alertmanager.enable` unless you give
        Alertmanager a configuration of your own: alerts for people (MachaApprovalsPending,
        MachaDown, MachaRemediationFailed, every `audience="human"` alert and every alert
        of another host) go to it, the alerts the sidecar acts on go to the sidecar.
      '';
    };

    prometheus.rules = mkOption {
      type = types.package;
      readOnly = true;
      default = rules;
      defaultText = lib.literalExpression "macha.yml and macha-sidecar.yml, rendered from this configuration";
      description = ''
        The alert rules rendered from this configuration's thresholds (`macha.yml`,
        `macha-sidecar.yml`): `prometheus.enable` adds them to services.prometheus.ruleFiles;
        for a Prometheus on another host, add "''${rules}/macha.yml" and
        "''${rules}/macha-sidecar.yml" to its rule files.
      '';
    };

    alertmanager.receiver = mkOption {
      type = types.attrs;
      readOnly = true;
      default = alertmanagerReceiver;
      defaultText = lib.literalExpression ''{ name = "macha-autonomous"; webhook_configs = [ { url = "http://127.0.0.1:9847/alerts"; /* … */ } ]; }'';
      description = ''
        The Alertmanager receiver, for a services.prometheus.alertmanager.configuration
        of your own: add it to `receivers`.
      '';
    };

    alertmanager.fleetHosts = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            name = mkOption {
              type = types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]{0,62}";
              example = "host1";
              description = "The host's name: its `instance` label (as its scrape job sets it) and its sidecar's hostname.";
            };
            url = mkOption {
              type = types.strMatching "https?://[^[:space:]]+";
              example = "http://host1.example.org:9847";
              description = "Where that host's sidecar listens, reachable from this Alertmanager (`/alerts` is added).";
            };
            tokenFile = mkOption {
              type = types.nullOr (types.strMatching "/.+");
              default = null;
              example = "/run/secrets/macha-host1-token";
              description = ''
                A file on this host holding that host's webhook token (its
                `webhookTokenFile`, or a copy of the token it generated). Given as a string:
                systemd hands Alertmanager a copy, it never enters the Nix store. Null: no
                token is sent, and a sidecar beyond loopback refuses the delivery (401).
              '';
            };
          };
        }
      );
      default = [ ];
      example = lib.literalExpression ''
        [
          { name = "host1"; url = "http://host1.example.org:9847"; tokenFile = "/run/secrets/macha-host1"; }
          { name = "host2"; url = "http://host2.example.org:9847"; tokenFile = "/run/secrets/macha-host2"; }
        ]
      '';
      description = ''
        Push for a fleet, on the host that runs Alertmanager: one webhook receiver and one
        route per host, matched on its `instance` label, so each host's alerts reach that
        host's sidecar only (and the sidecars' own health, `audience="human"`, reaches
        people). The alternative needs no list: each sidecar pulls its own alerts
        (settings.alertmanager_urls); docs/fleet.md compares the two.
      '';
    };

    alertmanager.fleetReceivers = mkOption {
      type = types.listOf types.attrs;
      readOnly = true;
      default = fleetReceivers;
      defaultText = lib.literalExpression ''map (host: { name = "macha-''${host.name}"; webhook_configs = [ /* … */ ]; }) fleetHosts'';
      description = "The receivers for `fleetHosts`, for a configuration of your own: add them to `receivers`.";
    };

    alertmanager.fleetRoutes = mkOption {
      type = types.listOf types.attrs;
      readOnly = true;
      default = fleetRoutes;
      defaultText = lib.literalExpression ''map (host: { receiver = "macha-''${host.name}"; matchers = [ "instance=\"''${host.name}\"" /* … */ ]; }) fleetHosts'';
      description = "The routes for `fleetHosts`, for a configuration of your own: add them to `route.routes`.";
    };

    alertmanager.route = mkOption {
      type = types.attrs;
      readOnly = true;
      default = alertmanagerRoute;
      defaultText = lib.literalExpression ''{ receiver = "macha-autonomous"; matchers = [ "instance=\"''${config.networking.hostName}\"" ]; continue = true; /* … */ }'';
      description = ''
        The Alertmanager route, for a configuration of your own: add it to `route.routes`.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = builtins.all (k: !(cfg.settings ? ${k})) (
            pure.moduleFields ++ builtins.attrValues pure.optionFields
          );
          message = ''
            services.macha-autonomous.settings must not set ${builtins.concatStringsSep ", " pure.moduleFields}
            or a field that has its own option (${builtins.concatStringsSep ", " (builtins.attrNames pure.optionFields)}).
          '';
        }
        {
          assertion = cfg.webhookTokenFile == null || !(lib.hasPrefix "/nix/store" cfg.webhookTokenFile);
          message = "services.macha-autonomous.webhookTokenFile must not be in the Nix store (it is world-readable).";
        }
        {
          # the daemon would refuse to start: fail at evaluation instead
          assertion = webhookAuth || loopback;
          message = "services.macha-autonomous.settings.webhook_auth = false turns the webhook's authentication off, which the daemon allows on a loopback listenAddress only (it is ${cfg.listenAddress}).";
        }
      ];
      # the wiring adds to these services; it does not switch them on
      warnings =
        let
          off =
            name: service: on: wanted:
            lib.optional (wanted && !on) "services.macha-autonomous.${name}.enable: ${service} is not enabled, nothing to wire into.";
        in
        off "prometheus" "services.prometheus" prometheus.enable cfg.prometheus.enable
        ++ off "alertmanager" "services.prometheus.alertmanager" alertmanager.enable cfg.alertmanager.enable
        ++ off "grafana" "services.grafana" grafana.enable cfg.grafana.enable
        ++ lib.optional (
          cfg.ollama.enable && cfg.ollamaUrl != "http://127.0.0.1:${toString config.services.ollama.port}"
        ) "services.macha-autonomous.ollamaUrl (${cfg.ollamaUrl}) is not the local Ollama that ollama.enable runs."
        ++ lib.optional (
          cfg.ollama.enable
          && !modelNamed
          && config.services.ollama.loadModels == [ ]
          && (cfg.settings.llm_enabled or true)
        ) ''
          services.macha-autonomous.ollama.enable: no model is pulled, because `model` is not set (its default, ${cfg.model}, is about 40 GB). Set services.macha-autonomous.model to the model to pull, or pull one yourself with `ollama pull`.''
        ++ lib.optional (cfg.openFirewall && loopback) "services.macha-autonomous.openFirewall opens port ${toString cfg.port}, but the listener is on ${cfg.listenAddress} only: set listenAddress too.";

      users.users.${names.user} = {
        isSystemUser = true;
        group = names.user;
        # the journal, also for the CLI tools that drop to this user (macha-logs service)
        extraGroups = [ "systemd-journal" ];
        description = "macha-obs sidecar";
        home = names.stateDir;
      };
      users.groups.${names.user} = { };

      environment.etc.${names.configFile}.source = settingsFile;
      environment.systemPackages = tools;

      systemd.services.${names.service} = {
        description = "macha-obs self-healing sidecar";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [
          "network-online.target"
          "dbus.service"
        ];
        restartTriggers = [ settingsFile ];
        # `nix-instantiate --parse` checks a proposed config_change before it is queued
        # (evaluation only, --store dummy://); without it every proposal is refused
        path = [ config.nix.package.out ];
        serviceConfig = pure.serviceConfig {
          inherit (cfg) package memoryMax;
          inherit configPath;
          tokenFile = cfg.webhookTokenFile;
        };
      };

      # Root actions, one typed argument per instance: `macha-obs privileged %i` parses
      # the instance back into an action and builds the argv itself.
      systemd.services."${names.privileged}@" = {
        description = "macha-obs privileged action %i";
        # like system.autoUpgrade: what nixos-rebuild needs to find and build the system
        path = [
          pkgs.coreutils
          pkgs.gnutar
          pkgs.xz.bin
          pkgs.gzip
          pkgs.gitMinimal
          config.nix.package.out
          config.system.build.nixos-rebuild
          pkgs.systemd
        ];
        environment =
          config.nix.envVars
          // lib.optionalAttrs (config.environment.sessionVariables ? NIX_PATH) {
            inherit (config.environment.sessionVariables) NIX_PATH;
          }
          // config.networking.proxy.envVars
          // pure.privilegedEnvironment;
        # a switch run by an instance must not stop that instance half-way
        restartIfChanged = false;
        stopIfChanged = false;
        unitConfig.X-StopOnRemoval = false;
        serviceConfig = pure.privilegedServiceConfig { inherit (cfg) package; };
      };

      networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall cfg.port;

      security.polkit.enable = true;
      environment.etc."polkit-1/rules.d/60-macha-autonomous.rules".text = pure.polkitRule {
        protectedUnits = pure.builtinProtectedUnits ++ cfg.protectedUnits;
      };
    }

    # systemd copies the token for Alertmanager (as root, so a 0600 file of another user is
    # fine); it stays out of the Nix store and out of Alertmanager's world-readable config
    (mkIf (webhookAuth && cfg.alertmanager.enable && alertmanager.enable) {
      systemd.services.alertmanager =
        {
          serviceConfig.LoadCredential = [ "${tokenCredential}:${tokenSource}" ];
        }
        // lib.optionalAttrs (cfg.webhookTokenFile == null) {
          # the daemon (Type=notify) writes its token before READY=1: on a first boot
          # Alertmanager must start after it, or LoadCredential= finds no file
          wants = [ "${names.service}.service" ];
          after = [ "${names.service}.service" ];
        };
    })

    # each fleet host's token, copied for Alertmanager the same way
    (mkIf (cfg.alertmanager.enable && alertmanager.enable && fleetTokens != [ ]) {
      systemd.services.alertmanager.serviceConfig.LoadCredential = map (
        host: "${fleetCredential host}:${host.tokenFile}"
      ) fleetTokens;
    })

    (mkIf cfg.prometheus.enable {
      services.prometheus.scrapeConfigs = [
        {
          job_name = "macha";
          static_configs = [
            {
              targets = [ scrapeTarget ];
              labels.instance = hostname;
            }
          ];
        }
      ];
      # the host (macha.yml), and what the sidecar decided and did (macha-sidecar.yml),
      # with this configuration's thresholds
      services.prometheus.ruleFiles = [
        "${rules}/macha.yml"
        "${rules}/macha-sidecar.yml"
      ];
    })

    # Prometheus sends its alerts to the Alertmanager next to it (a list of your own wins)
    (mkIf (cfg.prometheus.enable && cfg.alertmanager.enable) {
      services.prometheus.alertmanagers = mkDefault [
        {
          static_configs = [
            { targets = [ (pure.scrapeAddress alertmanager.listenAddress alertmanager.port) ]; }
          ];
        }
      ];
    })

    (mkIf cfg.alertmanager.enable {
      # `configuration` is one attrset merged shallowly: a configuration of your own
      # replaces this default whole, and then needs the receiver and route (assertion).
      services.prometheus.alertmanager.configuration = mkDefault defaultAlertmanagerConfiguration;
      assertions = [
        {
          assertion = human != null || ownAlertmanagerConfiguration;
          message = ''
            services.macha-autonomous.alertmanager.enable: no receiver reaches a person, so
            MachaApprovalsPending (actions waiting for your approval) and MachaDown would reach
            nobody. Add one, for example
              services.macha-autonomous.alertmanager.humanReceiver = {
                name = "admin";
                email_configs = [ { to = "admin@example.org"; from = "alertmanager@example.org"; smarthost = "smtp.example.org:587"; } ];
              };
            (any Alertmanager receiver: email_configs, webhook_configs, …), or give
            services.prometheus.alertmanager.configuration of your own with
            config.services.macha-autonomous.alertmanager.receiver and .route in it.
          '';
        }
        {
          assertion =
            let
              fleetNames = map (h: h.name) fleetHosts;
            in
            lib.unique fleetNames == fleetNames && !(builtins.elem hostname fleetNames);
          message = "services.macha-autonomous.alertmanager.fleetHosts: each host once, and not this host (${hostname}), whose sidecar has its own route already.";
        }
        {
          assertion = builtins.all (h: !(lib.hasPrefix "/nix/store" (toString (h.tokenFile or null)))) fleetHosts;
          message = "services.macha-autonomous.alertmanager.fleetHosts: a tokenFile must not be in the Nix store (it is world-readable).";
        }
        {
          assertion = human == null || human.name != alertmanagerReceiver.name;
          message = "services.macha-autonomous.alertmanager.humanReceiver.name must not be \"${alertmanagerReceiver.name}\" (the sidecar's own receiver).";
        }
        {
          assertion =
            alertmanager.configText != null
            || builtins.any (r: (r.name or null) == "macha-autonomous") (
              alertmanager.configuration.receivers or [ ]
            );
          message = ''
            services.macha-autonomous.alertmanager.enable: your
            services.prometheus.alertmanager.configuration has no "macha-autonomous" receiver.
            Add config.services.macha-autonomous.alertmanager.receiver to its receivers and
            config.services.macha-autonomous.alertmanager.route to route.routes.
          '';
        }
      ];
    })

    (mkIf cfg.grafana.enable {
      services.grafana.provision.enable = mkDefault true;
      services.grafana.provision.dashboards.settings.providers = [
        {
          name = "macha-obs";
          folder = "macha-obs";
          options.path = ../grafana/dashboards;
        }
      ];
    })

    (mkIf cfg.ollama.enable {
      services.ollama = {
        enable = mkDefault true;
        host = mkDefault "127.0.0.1";
        loadModels = lib.optional modelNamed cfg.model;
      };
      # Prompts go only to a socket Ollama's user owns: a local user who binds the port
      # while Ollama is down gets nothing. services.ollama runs as DynamicUser "ollama"
      # (or services.ollama.user): the uid changes, the name resolves while it runs, and
      # the daemon compares names. Set settings.llm_endpoint_user = "" to turn it off.
      services.macha-autonomous.settings.llm_endpoint_user = mkDefault (
        if (config.services.ollama.user or null) != null then config.services.ollama.user else "ollama"
      );
      systemd.services.${names.service} = {
        wants = [ "ollama.service" ];
        after = [ "ollama.service" ];
      };
    })
  ]);
}
