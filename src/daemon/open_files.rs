//! The number of files the daemon may hold open.
//!
//! Over HTTP/1.1 every request in flight holds a connection of its own, and
//! an adaptive hook may have up to `delivery.max_concurrency_per_webhook`
//! (512) of them. systemd starts services with a soft limit of 1024 open
//! files (the hard limit is far higher: 524288 on current systemd), so two
//! distant hooks at full speed would run out, and a connection refused with
//! "Too many open files" counts as the target failing: its hook's limit is
//! halved and, nine times in a row, a healthy hook is parked. The low soft
//! default protects programs that use `select()`; walhook does not (tokio
//! uses epoll), so, as systemd advises such programs, it raises its soft
//! limit to the hard one when the daemon starts.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The open-files limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft open-files limit to the hard limit.
pub fn raise() -> nix::Result<OpenFiles> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (now, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFiles { before: soft, now })
}

/// Open files that `ceiling` connections per hook can take: two hooks at
/// full speed over HTTP/1.1, and room for the SQL sessions, the metrics
/// listener and the rest.
fn wanted(ceiling: usize) -> u64 {
    2 * ceiling as u64 + 256
}

/// Raise the limit and say what it is; warn when it stays below what the
/// configured concurrency can take.
pub fn raise_and_report(ceiling: usize) {
    match raise() {
        Ok(OpenFiles { before, now }) => {
            if now > before {
                tracing::info!("open files: soft limit raised from {before} to {now}");
            }
            let wanted = wanted(ceiling);
            if now < wanted {
                tracing::warn!(
                    "open files: the limit is {now}, below the {wanted} that hooks of up to \
                     {ceiling} connections each may need (HTTP/1.1 holds a connection per \
                     request in flight); raise LimitNOFILE= in the unit, or lower \
                     delivery.max_concurrency_per_webhook (or a fixed \
                     delivery.concurrency_per_webhook)"
                );
            }
        }
        Err(e) => tracing::warn!("open files: cannot read or raise the limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        // One below the hard limit: enough to show the raise, never
        // enough to starve the other tests of this process.
        setrlimit(Resource::RLIMIT_NOFILE, hard - 1, hard).expect("lowering the soft limit");
        let raised = raise().expect("raising the soft limit");
        assert_eq!(
            raised,
            OpenFiles {
                before: hard - 1,
                now: hard
            }
        );
        // Already at the hard limit: nothing to do.
        assert_eq!(
            raise().expect("reading the limit"),
            OpenFiles {
                before: hard,
                now: hard
            }
        );
    }
}
