//! The VMM's landlock ruleset: every filesystem access right, TCP bind and
//! connect, signals and abstract unix sockets outside the sandbox are
//! handled, and no rule grants any of them back. After it the VMM opens
//! no file at all; the descriptors it opened before keep working.
//!
//! Best effort: the kernel enforces what its landlock ABI knows (Debian
//! 6.1: ABI 2, every filesystem right but truncate and device ioctls; TCP
//! rights from ABI 4, scopes from ABI 6). Where the kernel has no landlock
//! at all the VMM runs on without it (the jail's uid, chroot and dropped
//! capabilities still hold, docs/runtime.md); where it has landlock and the
//! ruleset still is not enforced, the VMM refuses to run its guest.

use landlock::{
    Access, AccessFs, AccessNet, LandlockStatus, Ruleset, RulesetAttr, RulesetError, RulesetStatus,
    Scope, ABI,
};

/// The newest landlock features asked for (Linux 6.12); newer ABIs add
/// nothing the VMM needs denied.
const WANTED: ABI = ABI::V6;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Cannot restrict the VMM with landlock")]
    Ruleset(#[source] RulesetError),
    #[error("The kernel has landlock but did not enforce the VMM's ruleset; the VM does not start unconfined")]
    NotEnforced,
}

/// Whether the ruleset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landlocked {
    /// Enforced, as far as the kernel's landlock ABI goes.
    Enforced,
    /// The kernel has no landlock (not built in, or not in its `lsm=`).
    Absent,
}

/// Restricts the calling thread, and every thread it starts from now on,
/// to the descriptors it holds. Needs `no_new_privs` (set before).
pub fn restrict() -> Result<Landlocked, LandlockError> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(WANTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(WANTED)))
        .and_then(|r| r.scope(Scope::from_all(WANTED)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(LandlockError::Ruleset)?;
    match (status.ruleset, status.landlock) {
        (RulesetStatus::NotEnforced, LandlockStatus::Available { .. }) => {
            Err(LandlockError::NotEnforced)
        }
        (RulesetStatus::NotEnforced, _) => Ok(Landlocked::Absent),
        // Fully, or partly where the kernel's ABI is older than WANTED.
        _ => Ok(Landlocked::Enforced),
    }
}
