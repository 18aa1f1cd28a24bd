{
  description = "macha-obs: a self-healing sidecar for NixOS hosts (watch, explain, fix within policy, audit)";

  # The only input. No flake.lock is committed: it could not be generated where this was
  # written (no network, no nixpkgs); `nix flake lock` on a networked machine writes it
  # (docs/nixos.md).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        macha-obs = pkgs.callPackage ./nixos/package.nix { };
        default = macha-obs;
      });

      # `nixpkgs.overlays = [ macha-obs.overlays.default ];` puts pkgs.macha-obs in your
      # package set; the module's `package` option then defaults to it
      overlays.default = final: prev: {
        macha-obs = final.callPackage ./nixos/package.nix { };
      };

      nixosModules.default = {
        imports = [ ./nixos/module.nix ];
      };
      nixosModules.macha-autonomous = self.nixosModules.default;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps:
              map (name: ps.${name}) self.packages.${pkgs.stdenv.hostPlatform.system}.default.dependencyNames
              ++ [
                ps.pytest
                ps.pytest-timeout
                ps.hypothesis
                ps.mypy
                ps.types-requests
                ps.types-psutil
              ]
            ))
            pkgs.ruff
            pkgs.prometheus
            pkgs.prometheus-alertmanager
            pkgs.nodejs
          ];
        };
      });

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        vm = pkgs.testers.runNixOSTest (import ./nixos/tests/vm.nix { inherit self; });
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
