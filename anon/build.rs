//! Sets `ANON_GIT_REV` for `--version`: the short hash of the commit the
//! programs are built from, with `-dirty` when tracked files differ from it
//! (untracked files do not count), or `unknown` without git or a repository
//! (a source package, say). An `ANON_GIT_REV` in the environment wins, so a
//! packager can pass the revision in.
//!
//! Reruns on a commit, a checkout or a pull: it watches `HEAD`, the loose ref
//! `HEAD` points to (or, while that ref lives only in `packed-refs`, the
//! folder the loose ref will be written to, and `packed-refs`), and this
//! package's `src` (which rebuilds the crate anyway). An edit elsewhere in
//! the tree alone does not refresh the `-dirty` mark: `scripts/release.sh`
//! passes the revision in for that reason.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        // Never write the index (a `git status` may), which would look like
        // a change to anyone watching it.
        .arg("--no-optional-locks")
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A path git printed, relative to `dir` unless absolute.
fn git_path(dir: &Path, args: &[&str]) -> Option<PathBuf> {
    let p = PathBuf::from(git(dir, args)?);
    let p = if p.is_absolute() { p } else { dir.join(p) };
    Some(std::fs::canonicalize(&p).unwrap_or(p))
}

fn watch(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-env-changed=ANON_GIT_REV");
    let rev = match std::env::var("ANON_GIT_REV") {
        Ok(rev) if !rev.is_empty() => rev,
        _ => {
            let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
            git_rev(&dir).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=ANON_GIT_REV={rev}");
}

fn git_rev(dir: &Path) -> Option<String> {
    // Watch first: a repository without commits yet gets a revision as soon
    // as its first commit is made.
    // Only a repository that has these sources, not one around an unpacked
    // source archive.
    git(dir, &["ls-files", "--error-unmatch", "Cargo.toml"])?;
    let git_dir = git_path(dir, &["rev-parse", "--git-dir"])?;
    // Refs live in the common folder (which differs in a linked worktree).
    let common = git_path(dir, &["rev-parse", "--git-common-dir"]).unwrap_or_else(|| git_dir.clone());
    watch(&git_dir.join("HEAD"));
    let packed = common.join("packed-refs");
    if packed.exists() {
        watch(&packed);
    }
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = common.join(&reference);
        if loose.exists() {
            watch(&loose);
        } else {
            // Packed (a fresh clone) or not born yet: the next commit creates
            // the loose ref in this folder (or one of its subfolders).
            // Watching a path that does not exist would rerun every build.
            let mut folder = loose.parent();
            while let Some(f) = folder {
                if f.is_dir() {
                    watch(f);
                    break;
                }
                folder = f.parent();
            }
        }
    }
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    let dirty = git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
