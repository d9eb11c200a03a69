//! Packaging (SPEC §6): the unit passes `systemd-analyze verify`, and the Debian package built
//! by `scripts/build-deb.sh` holds the binary, the unit, the config as a conffile and the docs,
//! laid out as documented when unpacked into a scratch root.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    assert!(have("systemd-analyze"), "systemd-analyze is needed (Debian package `systemd`; .ci/run installs it)");
    let tmp = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/gale.service")).unwrap();
    for needed in [
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=process",
        "RestartPreventExitStatus=4 78",
        "WatchdogSec=30",
        "ExecReload=",
        "Delegate=yes",
        "ConfigurationDirectory=gale",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    // verify checks that ExecStart exists: point it at the binary this test was built with.
    let unit = unit.replace("/usr/bin/gale", env!("CARGO_BIN_EXE_gale"));
    std::fs::write(tmp.path().join("gale.service"), unit).unwrap();
    run(Command::new("systemd-analyze").arg("verify").arg("gale.service").current_dir(tmp.path()));
}

#[test]
fn the_debian_package_lays_out_binary_unit_config_and_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let deb = run(Command::new(root.join("scripts/build-deb.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_gale"), "--out"])
        .arg(tmp.path()));
    let deb = deb.trim();
    let listing = run(Command::new("dpkg-deb").args(["-c", deb]));
    for path in [
        "./usr/bin/gale",
        "./lib/systemd/system/gale.service",
        "./etc/gale/gale.toml",
        "./etc/gale/healthchecks/",
        "./usr/share/doc/gale/README.md",
        "./usr/share/doc/gale/docs/operations.md",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(path)), "{path} missing from the package:\n{listing}");
    }
    assert!(listing.lines().all(|l| l.contains("root/root")), "files owned by root:\n{listing}");
    let control = run(Command::new("dpkg-deb").args(["-f", deb, "Package", "Version"]));
    assert!(control.contains("Package: gale") && control.contains(env!("CARGO_PKG_VERSION")), "{control}");
    let scratch = tmp.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(deb).arg(&scratch));
    let ctrl = tmp.path().join("ctrl");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl));
    assert_eq!(std::fs::read_to_string(ctrl.join("conffiles")).unwrap().trim(), "/etc/gale/gale.toml");
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    let starts = postinst.lines().any(|l| l.trim_start().starts_with("systemctl start"));
    assert!(postinst.contains("systemctl enable") && !starts, "enabled, not started:\n{postinst}");
    // The packaged binary and config work as laid out.
    let version = run(Command::new(scratch.join("usr/bin/gale")).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let check = Command::new(scratch.join("usr/bin/gale"))
        .args(["check-config", "--config"])
        .arg(scratch.join("etc/gale/gale.toml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "the shipped config is valid: {}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn install_from_source_lays_out_the_same_files_and_keeps_an_edited_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("root");
    let install = || {
        run(Command::new(root.join("scripts/install.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_gale"), "--root"])
            .arg(&scratch))
    };
    install();
    for path in
        ["usr/bin/gale", "lib/systemd/system/gale.service", "etc/gale/gale.toml", "usr/share/doc/gale/README.md"]
    {
        assert!(scratch.join(path).exists(), "{path} missing");
    }
    assert!(scratch.join("etc/gale/healthchecks").is_dir());
    // An operator's edit survives a second install (an upgrade).
    let config = scratch.join("etc/gale/gale.toml");
    std::fs::write(&config, "# edited\n").unwrap();
    let out = install();
    assert!(out.contains("keeping the existing"), "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited\n");
}
