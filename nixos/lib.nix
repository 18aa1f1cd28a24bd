# The pure parts of the NixOS module: builtins only, no nixpkgs, so that tests on a machine
# without nixpkgs can evaluate them (`nix-instantiate --store dummy:// --eval`).
# module.nix imports this file; nothing here reads the NixOS configuration.
let
  inherit (builtins)
    attrNames
    baseNameOf
    concatMap
    fromJSON
    match
    readFile
    toJSON
    ;

  units = fromJSON (readFile ../macha_obs/setup/units.json);

  # macha_obs/protected_units.json is the one source of truth for the built-in protected
  # units (protected.py reads it too); the test suite checks that both lists are equal.
  builtinProtectedUnits = concatMap (c: c.units) (
    fromJSON (builtins.readFile ../macha_obs/protected_units.json)
  ).classes;

  # posture: backups. The daemon's default backup_units (config/checks.py reads the same
  # file), which the module extends with the user's restic and borg jobs.
  defaultBackupUnits = (fromJSON (readFile ../macha_obs/config/backup_units.json)).units;

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
    "mcp.enable" = "mcp_enabled";
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
  # macha_obs/setup/units.json holds them (and the units' hardening) for this file and for
  # `macha-obs install` on other distributions alike (macha_obs/setup/units.py).
  names = rec {
    inherit (units.names)
      user
      service
      privileged
      configFile # under /etc: the CLI tools' default
      stateDir
      credential
      ;
    credentialPath = "/run/credentials/${service}.service/${credential}";
    # without webhookTokenFile, the token the daemon generates (0600, its user's) before
    # it reports ready: macha_obs/intake/token.py, token_path(state_dir)
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
      mcp_enabled = cfg.mcp.enable;
      state_dir = names.stateDir;
      privileged_unit = names.privileged;
    }
    # the secret stays where it is; systemd hands the daemon a copy (LoadCredential)
    // (if cfg.webhookTokenFile == null then { } else { webhook_token_file = names.credentialPath; })
    // cfg.settings;

  # What both units can have, root or not; units.json says why where it is not obvious.
  commonHardening = units.common;

  # The daemon. docs/nixos.md explains what it keeps and why.
  serviceConfig =
    {
      package,
      configPath,
      tokenFile,
      memoryMax,
    }:
    commonHardening
    // units.daemon
    // {
      ExecStart = "${package}/bin/macha-obs --config ${configPath} serve";
      User = names.user;
      Group = names.user;
      StateDirectory = baseNameOf names.stateDir;
      WorkingDirectory = names.stateDir;
      MemoryMax = memoryMax;
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
    // units.privileged
    // {
      ExecStart = "${package}/bin/macha-obs privileged %i";
    };

  # Environment of the privileged unit beyond what nixos-rebuild needs to find the
  # system (module.nix adds NIX_PATH and the proxy like system.autoUpgrade does).
  privilegedEnvironment = units.privilegedEnvironment;

  # [Unit] and [Install] of the two units, for module.nix's description, wants, after
  # and wantedBy (the same lines `macha-obs install` writes).
  unitSections = {
    daemon = {
      description = units.daemonUnit.Description;
      wants = units.daemonUnit.Wants;
      after = units.daemonUnit.After;
      wantedBy = units.daemonInstall.WantedBy;
    };
    privileged.description = units.privilegedUnit.Description;
  };

  # The typed argument of the privileged unit: the grammar and bounds of
  # macha_obs/execute/privileged.py (parse_instance), kept in units.json for this file and
  # macha_obs/setup/units.py; tests check it against the Python grammar.
  privilegedInstanceRegExp = units.privilegedInstance.regexp;
  privilegedBounds = units.privilegedInstance.bounds;

  inherit (units) verbs;

  # ES5 only: polkit's JavaScript engine (duktape or mozjs) is not a modern one. The rule
  # is macha_obs/setup/polkit-rule.js.in with its @NAME@ values filled in as JSON, here and in
  # macha_obs/setup/units.py alike.
  polkitRule =
    { protectedUnits }:
    let
      # every bound of the grammar as @BOUNDS_<name>@
      bounds = builtins.listToAttrs (
        map (k: {
          name = "BOUNDS_${k}";
          value = privilegedBounds.${k};
        }) (attrNames privilegedBounds)
      );
      values = bounds // {
        USER = names.user;
        VERBS = verbs;
        PROTECTED = protectedUnits;
        PRIVILEGED_PREFIX = "${names.privileged}@";
        INSTANCE = privilegedInstanceRegExp;
      };
    in
    builtins.replaceStrings (map (k: "@${k}@") (attrNames values)) (
      map (k: toJSON values.${k}) (attrNames values)
    ) (readFile ../macha_obs/setup/polkit-rule.js.in);
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
    defaultBackupUnits
    serviceConfig
    privilegedServiceConfig
    privilegedEnvironment
    privilegedInstanceRegExp
    privilegedBounds
    verbs
    polkitRule
    unitSections
    ;
}
