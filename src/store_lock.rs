//! Telling the operator that another millgate already uses the store, instead of sled's own
//! "could not acquire lock on \"./data/db\": Os { code: 11, … }".

use std::path::Path;

/// How long a start waits for a lock whose taker is dead (see [`held_by_another`]).
const ORPHAN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A message naming the process that holds the sled database in `dir`, when one does.
///
/// A lock whose taker has died is waited for (up to 5 s): a millgate killed with `kill -9` a
/// moment ago can leave a child between `fork` and `exec` that still holds the inherited
/// descriptor, and lets go of it when it execs or exits.
pub fn held_by_another(dir: &Path) -> Option<String> {
    let deadline = std::time::Instant::now() + ORPHAN_WAIT;
    loop {
        let (message, pid) = holder(dir)?;
        let taker_dead = pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists());
        if !taker_dead || std::time::Instant::now() >= deadline {
            return Some(message);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The message naming who holds the store's lock, and the pid that took it, when one does.
///
/// sled takes an exclusive `flock` on `<dir>/db` for as long as it is open: trying the same
/// lock, without waiting, and letting go of it at once tells whether someone holds it.
#[cfg(target_os = "linux")]
fn holder(dir: &Path) -> Option<(String, Option<u32>)> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;

    // No database yet: a first start, nobody can hold it.
    let file = std::fs::File::open(dir.join("db")).ok()?;
    // SAFETY: `flock` on a descriptor this function owns for the duration of the call.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked == 0 {
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return None;
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EWOULDBLOCK) {
        return None;
    }
    let pid = file.metadata().ok().and_then(|m| holder_pid(m.ino()));
    let holder = pid.map_or_else(|| "pid unknown".to_string(), |pid| format!("pid {pid}"));
    let message = format!(
        "another millgate is using {} ({holder}): stop it first, or give this one its own \
         `[store] path`",
        dir.display()
    );
    Some((message, pid))
}

#[cfg(not(target_os = "linux"))]
fn holder(_dir: &Path) -> Option<(String, Option<u32>)> {
    None
}

/// The process holding a `flock` on the file with inode `ino`, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 4242 fd:01:1311 0 EOF`; waiters' lines carry `->`).
#[cfg(target_os = "linux")]
fn holder_pid(ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.contains(&"->") {
            return None;
        }
        let at = fields.iter().position(|f| *f == "FLOCK")?;
        let pid = fields.get(at + 3)?.parse().ok()?;
        let file_ino: u64 = fields.get(at + 4)?.rsplit(':').next()?.parse().ok()?;
        (file_ino == ino).then_some(pid)
    })
}
