# The pure parts of the NixOS module: builtins only, no nixpkgs, so that tests on a machine
# without nixpkgs can evaluate them (`nix-instantiate --store dummy:// --eval`).
# module.nix imports this file; nothing here reads the NixOS configuration.
let
  inherit (builtins)
    concatMap
    fromJSON
    match
    toJSON
    ;

  # macha_obs/protected_units.json is the one source of truth for the built-in protected
  # units (config.py reads it too); the test suite checks that both lists are equal.
  builtinProtectedUnits = concatMap (c: c.units) (
    fromJSON (builtins.readFile ../macha_obs/protected_units.json)
  ).classes;

  # Module option (camelCase) → config field (snake_case). listenAddress and port render
  # together to listen_address; `settings` carries every other field verbatim.
  optionFields = {
    autonomyLevel = "autonomy_level";
    checkInterval = "check_interval";
    model = "model";
    ollamaUrl = "ollama_url";
    analysis = "analysis";
    protectedUnits = "protected_units";
    webhookTokenFile = "webhook_token_file";
    maxActionsPerHour = "max_actions_per_hour";
    maxActionsPerTargetPerHour = "max_actions_per_target_per_hour";
  };

  # Fields the module owns: the service's layout depends on them, so `settings` may not
  # set them.
  moduleFields = [
    "listen_address"
    "state_dir"
    "privileged_unit"
  ];

  # The daemon's user, unit names and paths: fixed, because the polkit rule, the unit
  # names in the built-in protected list and the CLI tools' defaults all depend on them.
  names = rec {
    user = "macha-autonomous";
    service = "macha-autonomous";
    privileged = "macha-autonomous-privileged";
    configFile = "macha-obs/config.toml"; # under /etc: the CLI tools' default
    stateDir = "/var/lib/macha-autonomous";
    credential = "webhook-token";
    credentialPath = "/run/credentials/${service}.service/${credential}";
    # without webhookTokenFile, the token the daemon generates (0600, its user's) before
    # it reports ready: macha_obs/webhook_token.py, token_path(state_dir)
    generatedToken = "${stateDir}/webhook.token";
  };

  # "127.0.0.1" 9847 → "127.0.0.1:9847"; an IPv6 literal gets brackets.
  listenAddress =
    host: port: if match ".*:.*" host != null then "[${host}]:${toString port}" else "${host}:${toString port}";

  # Where a local Prometheus reaches the listener: a wildcard address means loopback.
  scrapeAddress =
    host: port:
    if host == "0.0.0.0" || host == "" then
      listenAddress "127.0.0.1" port
    else if host == "::" then
      listenAddress "::1" port
    else
      listenAddress host port;

  # The option values (after defaults) → the TOML document's attrset.
  renderConfig =
    cfg:
    {
      autonomy_level = cfg.autonomyLevel;
      check_interval = cfg.checkInterval;
      model = cfg.model;
      ollama_url = cfg.ollamaUrl;
      analysis = cfg.analysis;
      # the daemon merges these with its built-ins; the built-ins cannot be removed
      protected_units = cfg.protectedUnits;
      listen_address = listenAddress cfg.listenAddress cfg.port;
      max_actions_per_hour = cfg.maxActionsPerHour;
      max_actions_per_target_per_hour = cfg.maxActionsPerTargetPerHour;
      state_dir = names.stateDir;
      privileged_unit = names.privileged;
    }
    # the secret stays where it is; systemd hands the daemon a copy (LoadCredential)
    // (if cfg.webhookTokenFile == null then { } else { webhook_token_file = names.credentialPath; })
    // cfg.settings;

  # What both units can have, root or not.
  commonHardening = {
    NoNewPrivileges = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateMounts = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    # D-Bus, HTTP (listener, Ollama, substituters), DNS/TCP probes; glibc's getaddrinfo
    # asks rtnetlink for local addresses
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
    SystemCallArchitectures = "native";
    SystemCallErrorNumber = "EPERM";
  };

  # The daemon. docs/nixos.md explains what it keeps and why.
  serviceConfig =
    {
      package,
      configPath,
      tokenFile,
      memoryMax,
    }:
    commonHardening
    // {
      Type = "notify";
      NotifyAccess = "main";
      ExecStart = "${package}/bin/macha-obs --config ${configPath} serve";
      WatchdogSec = "60s";
      Restart = "on-failure";
      RestartSec = "10s";
      TimeoutStopSec = "15s"; # the daemon exits within 10 s of SIGTERM
      User = names.user;
      Group = names.user;
      SupplementaryGroups = [ "systemd-journal" ]; # read the journal, nothing more
      StateDirectory = "macha-autonomous";
      StateDirectoryMode = "0750";
      WorkingDirectory = names.stateDir;
      UMask = "0077";

      # no privileges at all: systemd actions go through polkit, root ones through the
      # privileged template unit
      CapabilityBoundingSet = "";
      AmbientCapabilities = "";
      SecureBits = "noroot-locked";
      ProtectSystem = "strict";
      # read-only, not hidden: the disk collector must see /home's filesystem (hidden, it
      # would be an empty tmpfs and a full /home partition would go unnoticed)
      ProtectHome = "read-only";
      PrivateIPC = true;
      # other users' processes are hidden: no collector reads the process tree. Not
      # ProcSubset=pid: /proc/meminfo, /proc/pressure and /proc/net are read.
      ProtectProc = "invisible";
      MemoryDenyWriteExecute = true;
      RemoveIPC = true;
      KeyringMode = "private";
      DevicePolicy = "closed";
      SystemCallFilter = [
        "@system-service"
        "~@privileged @resources"
      ];
      MemoryMax = memoryMax;
      TasksMax = 256;
    }
    // (if tokenFile == null then { } else { LoadCredential = [ "${names.credential}:${tokenFile}" ]; });

  # The root side: one oneshot per typed argument. nixos-rebuild runs
  # switch-to-configuration in a transient unit of its own (systemd-run), and with
  # NIX_REMOTE=daemon the builds and the garbage collection happen in nix-daemon, so
  # what runs here evaluates, sets profile links and vacuums the journal: it can have a
  # read-only system except /nix/var/nix and the journal, and root's capabilities
  # trimmed to those. docs/nixos.md lists what is and is not verified.
  privilegedServiceConfig =
    { package }:
    commonHardening
    // {
      Type = "oneshot";
      ExecStart = "${package}/bin/macha-obs privileged %i";
      TimeoutStartSec = "2h"; # a nixos-rebuild that builds
      CacheDirectory = "macha-autonomous-privileged"; # nix's caches, not /root/.cache

      ProtectSystem = "strict";
      ReadWritePaths = [
        "-/nix/var/nix" # profiles and their generations
        "-/var/log/journal"
        "-/run/log/journal"
      ];
      ProtectHome = "read-only"; # a flake under /home must stay readable
      # file access as root, D-Bus to systemd (systemd-run), signals to its children
      CapabilityBoundingSet = [
        "CAP_CHOWN"
        "CAP_DAC_OVERRIDE"
        "CAP_DAC_READ_SEARCH"
        "CAP_FOWNER"
        "CAP_FSETID"
        "CAP_KILL"
        "CAP_SETGID"
        "CAP_SETUID"
        "CAP_SYS_ADMIN"
      ];
      SystemCallFilter = [ "@system-service" ];
      UMask = "0022"; # profile links and journal files keep their usual modes
    };

  # Environment of the privileged unit beyond what nixos-rebuild needs to find the
  # system (module.nix adds NIX_PATH and the proxy like system.autoUpgrade does).
  privilegedEnvironment = {
    NIX_REMOTE = "daemon";
    HOME = "/root";
    XDG_CACHE_HOME = "/var/cache/macha-autonomous-privileged";
  };

  # The typed argument of the privileged unit: the grammar and bounds of
  # macha_obs/execute/privileged.py (parse_instance), which tests check against this.
  privilegedInstanceRegExp = "^(?:nix-gc(?:-older-than-([1-9][0-9]{0,3})d)?|journal-vacuum-([1-9][0-9]{1,6})M|nixos-rebuild-(?:dry-build|test|switch|boot)|nixos-rollback)$";
  privilegedBounds = {
    days = [
      1
      3650
    ];
    megabytes = [
      16
      1000000
    ];
  };

  verbs = [
    "start"
    "restart"
    "reset-failed"
  ];

  # ES5 only: polkit's JavaScript engine (duktape or mozjs) is not a modern one.
  polkitRule =
    { protectedUnits }:
    ''
      // macha-autonomous: its user may start, restart and reset-failed units that are
      // not protected, and start the privileged helper with a valid typed argument.
      // Everything else systemd offers is refused to it, whatever later rules say.
      (function () {
        var USER = ${toJSON names.user};
        var VERBS = ${toJSON verbs};
        var PROTECTED = ${toJSON protectedUnits};
        var PRIVILEGED_PREFIX = ${toJSON "${names.privileged}@"};
        var INSTANCE = new RegExp(${toJSON privilegedInstanceRegExp});
        var DAYS = ${toJSON privilegedBounds.days};
        var MEGABYTES = ${toJSON privilegedBounds.megabytes};

        function escapeChar(c) {
          return /[.*+?^$(){}|[\]\\\/-]/.test(c) ? "\\" + c : c;
        }

        // Python's fnmatch.translate, for fnmatchcase(name, pattern) semantics.
        function globToRegExp(pat) {
          var res = "";
          var i = 0;
          var n = pat.length;
          while (i < n) {
            var c = pat.charAt(i);
            i += 1;
            if (c === "*") {
              res += "[\\s\\S]*";
              while (i < n && pat.charAt(i) === "*") {
                i += 1;
              }
            } else if (c === "?") {
              res += "[\\s\\S]";
            } else if (c === "[") {
              var j = i;
              if (j < n && pat.charAt(j) === "!") {
                j += 1;
              }
              if (j < n && pat.charAt(j) === "]") {
                j += 1;
              }
              while (j < n && pat.charAt(j) !== "]") {
                j += 1;
              }
              if (j >= n) {
                res += "\\[";
              } else {
                res += setToRegExp(pat, i, j);
                i = j + 1;
              }
            } else {
              res += escapeChar(c);
            }
          }
          return new RegExp("^" + res + "$");
        }

        // The set pat[i:j] (between "[" and "]"), with Python's rules for "!", ranges
        // and empty ranges.
        function setToRegExp(pat, i, j) {
          var stuff;
          if (pat.slice(i, j).indexOf("-") < 0) {
            stuff = pat.slice(i, j).replace(/\\/g, "\\\\");
          } else {
            var chunks = [];
            var k = pat.charAt(i) === "!" ? i + 2 : i + 1;
            for (;;) {
              k = pat.indexOf("-", k);
              if (k < 0 || k >= j) {
                break;
              }
              chunks.push(pat.slice(i, k));
              i = k + 1;
              k = k + 3;
            }
            var chunk = pat.slice(i, j);
            if (chunk) {
              chunks.push(chunk);
            } else {
              chunks[chunks.length - 1] += "-";
            }
            for (var m = chunks.length - 1; m > 0; m -= 1) {
              var prev = chunks[m - 1];
              if (prev.charAt(prev.length - 1) > chunks[m].charAt(0)) {
                chunks[m - 1] = prev.slice(0, -1) + chunks[m].slice(1);
                chunks.splice(m, 1);
              }
            }
            for (var q = 0; q < chunks.length; q += 1) {
              chunks[q] = chunks[q].replace(/\\/g, "\\\\").replace(/-/g, "\\-");
            }
            stuff = chunks.join("-");
          }
          stuff = stuff.replace(/([&~|\[\]])/g, "\\$1");
          if (!stuff) {
            return "(?!)";
          }
          if (stuff === "!") {
            return "[\\s\\S]";
          }
          if (stuff.charAt(0) === "!") {
            return "[^" + stuff.slice(1) + "]";
          }
          if (stuff.charAt(0) === "^") {
            return "[\\" + stuff + "]";
          }
          return "[" + stuff + "]";
        }

        var PROTECTED_RES = PROTECTED.map(globToRegExp);

        function within(text, bounds) {
          return text === undefined || (Number(text) >= bounds[0] && Number(text) <= bounds[1]);
        }

        function isPrivilegedInstance(instance) {
          var m = INSTANCE.exec(instance);
          return m !== null && within(m[1], DAYS) && within(m[2], MEGABYTES);
        }

        function isProtected(unit) {
          return PROTECTED_RES.some(function (re) {
            return re.test(unit);
          });
        }

        polkit.addRule(function (action, subject) {
          if (subject.user !== USER || action.id.indexOf("org.freedesktop.systemd1.") !== 0) {
            return polkit.Result.NOT_HANDLED;
          }
          if (action.id !== "org.freedesktop.systemd1.manage-units") {
            return polkit.Result.NO;
          }
          var unit = String(action.lookup("unit") || "");
          var verb = String(action.lookup("verb") || "");
          if (unit.indexOf(PRIVILEGED_PREFIX) === 0) {
            var instance = unit.slice(PRIVILEGED_PREFIX.length, -".service".length);
            var ok =
              verb === "start" &&
              unit.slice(-".service".length) === ".service" &&
              isPrivilegedInstance(instance);
            return ok ? polkit.Result.YES : polkit.Result.NO;
          }
          if (VERBS.indexOf(verb) < 0 || !unit || isProtected(unit)) {
            return polkit.Result.NO;
          }
          return polkit.Result.YES;
        });
      })();
    '';
in
{
  inherit
    builtinProtectedUnits
    optionFields
    moduleFields
    names
    listenAddress
    scrapeAddress
    renderConfig
    serviceConfig
    privilegedServiceConfig
    privilegedEnvironment
    privilegedInstanceRegExp
    privilegedBounds
    verbs
    polkitRule
    ;
}
