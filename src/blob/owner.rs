//! Whose workers may read a cache entry: blob privacy between users (SPEC §7 `run_as_user`).
//!
//! A worker that runs as user A must not read the blobs of a topology that runs as user B, so
//! cache entries are shared only between workers of one user. Layout under the cache root:
//! ```text
//! <root>/                 mode 0711, the agent's: anyone may pass through, nobody may list it
//! <root>/<entry>          Owner::Agent: workers running as the agent's own user
//! <root>/u<uid>/          Owner::User(uid): owned by uid, mode 0500, so only that user (and
//! <root>/u<uid>/<entry>     the agent, as root) can enter it; the entries in it stay the agent's
//! ```
//! An entry's files belong to the agent: its user can read them through its directory (they
//! are made readable by all when staged, whatever the archive said: only that user gets that
//! far) and cannot change them. Every lookup names an owner, so a worker is only ever linked to entries
//! under the directory of the user it runs as.
//!
//! `Owner::Agent` entries are also what an older release left in the cache (it had no
//! per-user directories): they are kept, and workers adopted from that release keep using
//! them, but no worker that runs as another user is newly linked to one.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the cache root: traversable (workers reach their entries through it), not listable.
pub(crate) const ROOT_MODE: u32 = 0o711;
/// Mode of a user's directory, owned by that user: read and enter, no one else at all. Not
/// writable, so the user's own workers cannot add, rename or remove entries by accident.
pub(crate) const USER_DIR_MODE: u32 = 0o500;
/// Prefix of a user's directory name: `u<uid>`.
const USER_DIR_PREFIX: &str = "u";

/// Whose workers may read an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Owner {
    /// Workers that run as the agent's own user (`run_as_user = false`): `<root>/<entry>`.
    Agent,
    /// Workers that run as this uid: `<root>/u<uid>/<entry>`.
    User(u32),
}

impl Owner {
    /// The owner of a worker that runs as `uid` (`None`: as the agent's user).
    pub(crate) fn of_uid(uid: Option<u32>) -> Owner {
        uid.map_or(Owner::Agent, Owner::User)
    }

    /// The directory holding this owner's entries.
    pub(crate) fn dir(self, root: &Path) -> PathBuf {
        match self {
            Owner::Agent => root.to_owned(),
            Owner::User(uid) => root.join(format!("{USER_DIR_PREFIX}{uid}")),
        }
    }

    /// The user whose directory `name` is; `None` for any name [`Owner::dir`] never makes.
    pub(crate) fn parse_dir(name: &str) -> Option<Owner> {
        let uid: u32 = name.strip_prefix(USER_DIR_PREFIX)?.parse().ok()?;
        (format!("{USER_DIR_PREFIX}{uid}") == name).then_some(Owner::User(uid))
    }

    /// What this owner's directory must be: (owning uid, mode); `None` for the agent's (the
    /// root, see [`ROOT_MODE`]). The permission rule, in one place.
    pub(crate) fn dir_rule(self) -> Option<(u32, u32)> {
        match self {
            Owner::Agent => None,
            Owner::User(uid) => Some((uid, USER_DIR_MODE)),
        }
    }

    /// Whether a worker can be given this owner's entries while `run_as_user` is as given:
    /// with it, only users' entries (every worker runs as a user); without it, only the agent's.
    pub(crate) fn usable(self, run_as_user: bool) -> bool {
        matches!(self, Owner::User(_)) == run_as_user
    }

    /// Creates this owner's directory if needed and (re)applies its rule, also to a directory
    /// whose owner or mode was changed since. Refuses anything there that is not a directory.
    pub(crate) fn prepare_dir(self, root: &Path) -> io::Result<PathBuf> {
        let dir = self.dir(root);
        let Some((uid, mode)) = self.dir_rule() else { return Ok(dir) };
        match std::fs::DirBuilder::new().mode(mode).create(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        // lstat, and lchown: a symlink planted here must not make the agent chown its target.
        if !std::fs::symlink_metadata(&dir)?.is_dir() {
            return Err(io::Error::other(format!("{} is not a directory", dir.display())));
        }
        std::os::unix::fs::lchown(&dir, Some(uid), None)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        Ok(dir)
    }
}

/// Gives the cache root its mode ([`ROOT_MODE`]).
pub(crate) fn prepare_root(root: &Path) -> io::Result<()> {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(ROOT_MODE))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_user_dir_name_round_trips_and_nothing_else_parses() {
        let root = Path::new("/c");
        assert_eq!(Owner::Agent.dir(root), root);
        assert_eq!(Owner::User(1000).dir(root), Path::new("/c/u1000"));
        assert_eq!(Owner::parse_dir("u1000"), Some(Owner::User(1000)));
        assert_eq!(Owner::parse_dir("u0"), Some(Owner::User(0)));
        for bad in ["u", "u01", "u+1", "u-1", "u1x", "x1", "U1", "u99999999999", "ab12"] {
            assert_eq!(Owner::parse_dir(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_user_dir_is_that_users_alone_and_is_repaired_when_changed() {
        // Our own uid, so that the rule can be checked without root.
        let me = nix::unistd::getuid().as_raw();
        let tmp = tempfile::tempdir().unwrap();
        let dir = Owner::User(me).prepare_dir(tmp.path()).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (me, 0o500));
        assert_eq!(Owner::User(me).dir_rule(), Some((me, 0o500)), "no access for group or others");
        // A user who opened its dir to others gets it closed again.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Owner::User(me).prepare_dir(tmp.path()).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o500);
        // Something that is not a directory in its place is refused, never followed.
        let other = tmp.path().join("elsewhere");
        std::fs::create_dir(&other).unwrap();
        let before = std::fs::metadata(&other).unwrap().mode();
        let planted = Owner::User(me.wrapping_add(1)).dir(tmp.path());
        std::os::unix::fs::symlink(&other, &planted).unwrap();
        assert!(Owner::User(me.wrapping_add(1)).prepare_dir(tmp.path()).is_err());
        assert_eq!(std::fs::metadata(&other).unwrap().mode(), before, "the link's target is untouched");
    }
}
