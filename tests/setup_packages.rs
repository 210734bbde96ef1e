//! A fresh machine runs what the tests, examples and scripts name: every
//! GStreamer element they mention must come from a Debian package that
//! `scripts/setup.sh` installs, or that those packages depend on.
//!
//! element name (found in the source text, `setup_guard::scan`)
//!   → plugin file (the GStreamer registry, as `gst-inspect-1.0` shows it)
//!   → Debian package (`dpkg -S`)
//!   → one of setup.sh's PACKAGE_GROUPS or their dependencies
//!     (`apt-cache depends --recurse --installed`).
//!
//! A package installed by hand on the machine that wrote a test is exactly
//! what this catches: it is installed, so the test passes there, but nothing
//! installs it on a fresh machine.

mod setup_guard;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gst::prelude::*;
use setup_guard::{debian, scan};

/// Where tests, examples and scripts live, relative to the repository root.
const SCANNED: &[&str] = &[
    "tests",
    "examples",
    "scripts",
    "host/tests",
    "protocol/tests",
    ".ci",
    "README.md",
];
/// This checker's own unit tests name elements as sample text.
const NOT_SCANNED: &[&str] = &["tests/setup_guard"];
/// setup.sh's group that tests, examples and scripts get on every machine
/// (scripts/test.sh and scripts/demo.sh set it up).
const DEFAULT_GROUP: &str = "base";
/// The package of libgstreamer, which registers `bin` and `pipeline` itself.
const CORE_PACKAGE: &str = "libgstreamer1.0-0";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn source_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
        let rel = dir.strip_prefix(root).unwrap_or(dir);
        if NOT_SCANNED.iter().any(|n| rel == Path::new(n)) {
            return;
        }
        if dir.is_file() {
            out.push(dir.to_path_buf());
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        entries.sort();
        for entry in entries {
            if entry.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            walk(&entry, root, out);
        }
    }
    let mut out = Vec::new();
    for part in SCANNED {
        walk(&root.join(part), root, &mut out);
    }
    out
}

/// Every element name with the places (`file:line`) that name it.
fn named_elements(root: &Path) -> BTreeMap<String, Vec<(String, bool)>> {
    let mut named: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for file in source_files(root) {
        // Binary files (none today) have no element names.
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for m in scan::mentions(&text) {
            named
                .entry(m.name)
                .or_default()
                .push((format!("{rel}:{}", m.line), m.certain));
        }
    }
    named
}

fn places(list: &[(String, bool)]) -> String {
    let mut shown: Vec<&str> = list.iter().map(|(p, _)| p.as_str()).take(3).collect();
    if list.len() > 3 {
        shown.push("...");
    }
    shown.join(", ")
}

#[test]
fn every_element_named_comes_from_a_package_setup_installs() {
    gst::init().unwrap();
    gstvsockenc::plugin_register_static().unwrap();
    let root = repo_root();

    let groups = setup_groups_flat(&root);
    let closure = debian::installed_closure(&groups.keys().cloned().collect::<Vec<_>>());
    let named = named_elements(&root);

    // Resolve every name GStreamer knows to its plugin file.
    let mut problems = Vec::new();
    let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let mut ours = BTreeSet::new();
    let mut core = Vec::new();
    for (name, list) in &named {
        let certain = list.iter().any(|(_, c)| *c);
        let Some(factory) = gst::ElementFactory::find(name) else {
            if certain {
                problems.push(format!(
                    "element `{name}` (named at {}) is not installed: no GStreamer plugin on \
                     this machine provides it. Find its Debian package (`apt-file search` for \
                     the plugin, or packages.debian.org) and add the package to \
                     scripts/setup.sh PACKAGE_GROUPS[{DEFAULT_GROUP}]",
                    places(list)
                ));
            }
            continue;
        };
        let plugin = factory.plugin().expect("an element factory has a plugin");
        match plugin.filename() {
            Some(file) => by_file.entry(file).or_default().push(name.clone()),
            // `bin` and `pipeline`, registered by libgstreamer itself.
            None if plugin.plugin_name() == "staticelements" => core.push(name.clone()),
            // Registered from the rlib: this project's own element.
            None if plugin.plugin_name() == "vsockenc" => {
                ours.insert(name.clone());
            }
            None => problems.push(format!(
                "element `{name}` (named at {}) comes from the statically registered plugin \
                 `{}`, which no Debian package ships",
                places(list),
                plugin.plugin_name()
            )),
        }
    }

    let files: Vec<PathBuf> = by_file.keys().cloned().collect();
    let owners = debian::owners(&files);
    let mut checked = BTreeSet::new();
    assert!(
        closure.contains(CORE_PACKAGE),
        "{CORE_PACKAGE} is not among the packages setup.sh pulls in: {closure:?}"
    );
    checked.extend(core);
    for (file, names) in &by_file {
        for name in names {
            let at = places(&named[name]);
            let Some(package) = owners.get(file) else {
                problems.push(format!(
                    "element `{name}` (named at {at}) comes from {}, which belongs to no Debian \
                     package (installed by hand?): a fresh machine will not have it; use an \
                     element from a Debian package and list that package in scripts/setup.sh",
                    file.display()
                ));
                continue;
            };
            if closure.contains(package) {
                checked.insert(name.clone());
                continue;
            }
            problems.push(format!(
                "element `{name}` (named at {at}) comes from {} in Debian package `{package}`, \
                 which scripts/setup.sh does not install (no group lists it, and no listed \
                 package depends on it): add `{package}` to PACKAGE_GROUPS[{}]",
                file.display(),
                groups_for(&named[name])
            ));
        }
    }

    // The scan itself must have found the elements every pipeline here uses,
    // or a broken scanner would pass by finding nothing.
    for must in ["videotestsrc", "h264parse", "avdec_h264", "appsink"] {
        assert!(
            checked.contains(must) || problems.iter().any(|p| p.contains(&format!("`{must}`"))),
            "the scan found no mention of `{must}` (found: {:?}): the scanner is broken",
            named.keys().collect::<Vec<_>>()
        );
    }
    assert!(
        ours.contains("vsockenc"),
        "the scan did not find this project's own `vsockenc` element"
    );
    assert!(
        problems.is_empty(),
        "{} GStreamer element(s) would be missing on a fresh machine:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
    eprintln!(
        "setup_packages: {} elements from packages setup.sh installs ({}), plus this project's {:?}",
        checked.len(),
        checked.iter().cloned().collect::<Vec<_>>().join(" "),
        ours
    );
}

/// Every package any group lists → its group.
fn setup_groups_flat(root: &Path) -> BTreeMap<String, String> {
    let mut flat = BTreeMap::new();
    for (group, packages) in debian::setup_groups(root) {
        for p in packages {
            flat.entry(p).or_insert_with(|| group.clone());
        }
    }
    flat
}

/// The group to add a missing package to: `vm` when only the real-guest
/// scripts and tests name the element (they set that group up), else the
/// base group everything gets.
fn groups_for(places: &[(String, bool)]) -> &'static str {
    let guest_only = places
        .iter()
        .all(|(p, _)| p.starts_with("scripts/vm/") || p.starts_with("tests/system_real_guest"));
    if guest_only {
        "vm"
    } else {
        DEFAULT_GROUP
    }
}
