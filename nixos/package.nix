# macha-obs, built from pyproject.toml: name and runtime dependencies are read from it,
# and the version from macha_obs/__init__.py, the one version source (pyproject.toml
# reads it there too), so the package cannot drift from what pip installs.
{
  lib,
  python3Packages,
}:
let
  project = (builtins.fromTOML (builtins.readFile ../pyproject.toml)).project;

  # the line `__version__ = "X.Y.Z"` of macha_obs/__init__.py
  versions = builtins.concatMap (
    line:
    let
      m = if builtins.isString line then builtins.match "__version__ = \"([^\"]+)\"" line else null;
    in
    if m == null then [ ] else m
  ) (builtins.split "\n" (builtins.readFile ../macha_obs/__init__.py));
  version =
    if builtins.length versions == 1 then
      builtins.head versions
    else
      throw "nixos/package.nix: macha_obs/__init__.py must set __version__ once";

  # "prometheus-client>=0.20" → python3Packages.prometheus-client (PEP 503 normalised)
  requirementName =
    spec:
    let
      m = builtins.match "[[:space:]]*([A-Za-z0-9][A-Za-z0-9._-]*).*" spec;
    in
    if m == null then
      throw "nixos/package.nix: cannot read the requirement ${spec}"
    else
      lib.toLower (builtins.replaceStrings [ "_" "." ] [ "-" "-" ] (builtins.head m));
  dependencyNames = map requirementName project.dependencies;
  python = python3Packages.python;
in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../LICENSE
      ../macha_obs
      (lib.fileset.maybeMissing ../README.md)
    ];
  };

  build-system = [ python3Packages.setuptools ];
  dependencies = map (name: python3Packages.${name}) dependencyNames;

  # The daemon starts its D-Bus child as `sys.executable -I -S .../macha_obs/systemd/worker.py`
  # and hands it its own sys.path: the interpreter alone does not know the package's
  # site-packages, the wrapper's PYTHONPATH does.
  makeWrapperArgs = [
    "--prefix"
    "PYTHONPATH"
    ":"
    "${placeholder "out"}/${python.sitePackages}:${python3Packages.makePythonPath (map (name: python3Packages.${name}) dependencyNames)}"
  ];

  # The test suite needs a real systemd, Prometheus and an LLM (./macha-dev test); the
  # NixOS VM test in the flake covers the installed package.
  doCheck = false;
  pythonImportsCheck = [
    "macha_obs"
    "macha_obs.cli"
  ];

  passthru = { inherit dependencyNames; };

  meta = {
    description = project.description;
    license = lib.licenses.mit;
    mainProgram = "macha-obs";
    platforms = lib.platforms.linux;
  };
}
