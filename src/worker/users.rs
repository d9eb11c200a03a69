//! Running workers as other users (SPEC §7 `worker.run_as_user`).
//!
//! With `run_as_user = true` every worker runs as its assignment's `user`, which must be listed
//! in `allowed_users` and have a uid ≥ `min_uid` (so no assignment can ask for root or a
//! system account). A worker that cannot be run that way is refused with the reason on its
//! slot; it is never run as the agent's own user instead. With `run_as_user = false` workers
//! run as the agent's user, and an assignment that names a `user` is refused: silently
//! ignoring it would run someone's code with the wrong identity.

/// The identity a worker is switched to between fork and exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<u32>,
}

/// `[worker]`'s user rules, kept by the executor (live on reload).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct UserPolicy {
    pub enabled: bool,
    pub allowed: Vec<String>,
    pub min_uid: u32,
}

impl UserPolicy {
    pub(crate) fn from_config(worker: &crate::config::WorkerConfig) -> UserPolicy {
        UserPolicy { enabled: worker.run_as_user, allowed: worker.allowed_users.clone(), min_uid: worker.min_uid }
    }

    /// Who a worker of `topology` asking for `user` runs as: `Ok(None)` = the agent's user.
    pub(crate) fn resolve(&self, topology: &str, user: Option<&str>) -> Result<Option<RunAs>, String> {
        match (self.enabled, user) {
            (false, None) => Ok(None),
            (false, Some(user)) => Err(format!(
                "topology {topology} asks to run as user `{user}`, but worker.run_as_user is false on this host"
            )),
            (true, None) => {
                Err(format!("topology {topology} names no `user`, and worker.run_as_user = true requires one"))
            }
            (true, Some(user)) => {
                if !self.allowed.iter().any(|a| a == user) {
                    return Err(format!(
                        "topology {topology}: user `{user}` is not in worker.allowed_users ({})",
                        if self.allowed.is_empty() { "empty".to_owned() } else { self.allowed.join(", ") }
                    ));
                }
                let entry = nix::unistd::User::from_name(user)
                    .map_err(|e| format!("topology {topology}: cannot look up user `{user}`: {e}"))?
                    .ok_or_else(|| format!("topology {topology}: user `{user}` does not exist on this host"))?;
                let uid = entry.uid.as_raw();
                if uid < self.min_uid {
                    return Err(format!(
                        "topology {topology}: user `{user}` has uid {uid}, below worker.min_uid {}",
                        self.min_uid
                    ));
                }
                let name = std::ffi::CString::new(user).map_err(|_| format!("topology {topology}: bad user name"))?;
                let groups = nix::unistd::getgrouplist(&name, entry.gid)
                    .map_err(|e| format!("topology {topology}: cannot read the groups of `{user}`: {e}"))?;
                Ok(Some(RunAs {
                    name: user.to_owned(),
                    uid,
                    gid: entry.gid.as_raw(),
                    groups: groups.iter().map(|g| g.as_raw()).collect(),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(enabled: bool, allowed: &[&str], min_uid: u32) -> UserPolicy {
        UserPolicy { enabled, allowed: allowed.iter().map(|s| (*s).to_owned()).collect(), min_uid }
    }

    #[test]
    fn the_rules_refuse_with_a_reason_that_names_topology_and_user() {
        assert_eq!(policy(false, &[], 1000).resolve("t", None), Ok(None));
        let err = policy(false, &[], 1000).resolve("t", Some("nobody")).unwrap_err();
        assert!(err.contains("topology t") && err.contains("run_as_user is false"), "{err}");
        let err = policy(true, &["nobody"], 1000).resolve("t", None).unwrap_err();
        assert!(err.contains("names no `user`"), "{err}");
        let err = policy(true, &["nobody"], 1000).resolve("t", Some("root")).unwrap_err();
        assert!(err.contains("`root` is not in worker.allowed_users (nobody)"), "{err}");
        let err = policy(true, &["daemon"], 1000).resolve("t", Some("daemon")).unwrap_err();
        assert!(err.contains("below worker.min_uid 1000"), "{err}");
        let err = policy(true, &["no-such-user-x"], 0).resolve("t", Some("no-such-user-x")).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let nobody = policy(true, &["nobody"], 1000).resolve("t", Some("nobody")).unwrap().unwrap();
        assert_eq!(nobody.uid, 65534);
    }
}
