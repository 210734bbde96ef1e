//! What Debian says: the packages `scripts/setup.sh` installs (and what
//! they pull in), and which package a file belongs to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (this check needs Debian's dpkg and apt)")
    });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `scripts/setup.sh --list`: group name → its packages.
pub fn setup_groups(repo: &Path) -> BTreeMap<String, Vec<String>> {
    let out = Command::new(repo.join("scripts/setup.sh"))
        .arg("--list")
        .output()
        .expect("run scripts/setup.sh --list");
    assert!(
        out.status.success(),
        "scripts/setup.sh --list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let groups: BTreeMap<String, Vec<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().map(str::to_string);
            Some((words.next()?, words.collect()))
        })
        .collect();
    assert!(
        groups.get("base").is_some_and(|p| !p.is_empty()),
        "scripts/setup.sh --list printed no `base` group: {groups:?}"
    );
    groups
}

/// The installed packages that `packages` are or depend on (Depends and
/// Pre-Depends, recursively; Recommends are not followed because setup.sh
/// installs with --no-install-recommends). Of alternatives (`a | b`) only the
/// installed ones count.
pub fn installed_closure(packages: &[String]) -> HashSet<String> {
    let out = run(Command::new("apt-cache")
        .args([
            "depends",
            "--recurse",
            "--installed",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ])
        .args(packages));
    // Package names start a line; dependencies are indented; virtual
    // packages are shown as <name>.
    out.lines()
        .filter(|l| !l.starts_with([' ', '|', '<']) && !l.is_empty())
        .map(|l| strip_arch(l.trim()).to_string())
        .collect()
}

fn strip_arch(package: &str) -> &str {
    package.split(':').next().unwrap_or(package)
}

/// `dpkg -S`: the package each file belongs to, for the files that belong
/// to one. A path is looked up as given and, failing that, with its symlinks
/// resolved (merged /usr: /lib → /usr/lib).
pub fn owners(files: &[PathBuf]) -> HashMap<PathBuf, String> {
    let mut found = HashMap::new();
    for file in files {
        let mut candidates = vec![file.clone()];
        if let Ok(real) = file.canonicalize() {
            if real != *file {
                candidates.push(real);
            }
        }
        for candidate in candidates {
            let out = run(Command::new("dpkg").arg("-S").arg(&candidate));
            // "pkg:arch[, pkg2]: /path"
            if let Some((packages, _)) = out.lines().next().and_then(|l| l.split_once(": ")) {
                let package = packages.split(", ").next().unwrap_or(packages);
                found.insert(file.clone(), strip_arch(package).to_string());
                break;
            }
        }
    }
    found
}
