//! Records the git revision the build came from (`TANDEM_GIT_REVISION`), for the run's
//! environment: two runs are only comparable when one knows which code made each.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let revision = git(&["describe", "--always", "--dirty", "--abbrev=12"])
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TANDEM_GIT_REVISION={revision}");
    // Built again when HEAD moves or the index changes (a commit, a checkout, a staged
    // edit), not on every edit of the tree: `-dirty` may lag an unstaged edit. The git
    // directory is asked for, so that a worktree (whose `.git` is a file) is watched too.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for file in ["HEAD", "index"] {
            let path = PathBuf::from(&dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
