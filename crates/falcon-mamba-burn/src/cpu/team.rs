//! A persistent team of threads for a job split into shares that meet at barriers (the fused
//! decode step). The threads start on first need and stay, so a step spawns none; whoever holds
//! the team runs a job on all of it, so jobs from several callers take turns instead of
//! competing for the cores with spinning waits. The caller runs no share itself: it sleeps until
//! the team is done, so the shares always run on the same threads, each left on its core, and a
//! caller's own work before and after a step overlaps other callers' steps.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::{Builder, JoinHandle};

use falcon_mamba_core::{Error, Result};

/// A job: called once per share, all shares at the same time.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// One share of a job for a member thread.
struct Task {
    /// The job, its lifetime erased: [`Team::run`] waits for every share before returning.
    job: Job<'static>,
    share: usize,
    /// Receives `true` once the share returned, `false` if it panicked.
    done: Sender<bool>,
}

struct Member {
    tasks: Sender<Task>,
    thread: JoinHandle<()>,
}

/// The team: threads that each run one share of every job.
pub struct Team {
    members: Vec<Member>,
    /// The members' stack size, `None` for the platform's default.
    stack_size: Option<usize>,
}

impl Team {
    /// A team with no threads yet.
    pub const fn new() -> Self {
        Team {
            members: Vec::new(),
            stack_size: None,
        }
    }

    /// Runs `job(share)` for every share in `0..shares` at once, each on a thread of the team
    /// (started where there are not enough yet). Returns once every share has finished. A thread that cannot be started is an error before any share
    /// runs; a share that panics is an error after all have finished (shares that wait for each
    /// other must let a panicking share release them).
    pub fn run(&mut self, shares: usize, job: Job<'_>) -> Result<()> {
        self.staff(shares)?;
        // SAFETY: the job is only called by the member threads between receiving a task and
        // sending its `done`, and this function receives every `done` (or learns that the task
        // was dropped unrun) before it returns, whether the shares return or panic. No member
        // can hold the reference once `run` returns.
        let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
        let (done, finished) = channel();
        let mut sent = 0;
        for (share, member) in self.members[..shares].iter().enumerate() {
            let task = Task {
                job,
                share,
                done: done.clone(),
            };
            if member.tasks.send(task).is_ok() {
                sent += 1;
            }
        }
        drop(done);
        let mut ok = sent == shares;
        for _ in 0..sent {
            ok &= finished.recv().unwrap_or(false);
        }
        if ok {
            Ok(())
        } else {
            Err(Error::Worker {
                reason: "a decode worker panicked; the step was abandoned".into(),
            })
        }
    }

    /// Makes sure `count` live member threads exist, replacing any that ended.
    fn staff(&mut self, count: usize) -> Result<()> {
        self.members.retain(|m| !m.thread.is_finished());
        while self.members.len() < count {
            let (tasks, inbox) = channel();
            let mut builder =
                Builder::new().name(format!("falcon-mamba-decode-{}", self.members.len() + 1));
            if let Some(size) = self.stack_size {
                builder = builder.stack_size(size);
            }
            let thread = builder
                .spawn(move || serve(inbox))
                .map_err(|e| Error::Worker {
                    reason: format!("cannot start a decode thread: {e}"),
                })?;
            self.members.push(Member { tasks, thread });
        }
        Ok(())
    }
}

/// A member's life: run each share it is handed, report how it went.
fn serve(inbox: Receiver<Task>) {
    for task in inbox {
        let returned = catch_unwind(AssertUnwindSafe(|| (task.job)(task.share))).is_ok();
        // The caller may be gone only if it is unwinding itself; nothing is left to tell.
        let _ = task.done.send(returned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn every_share_runs_once_and_the_threads_are_reused() {
        let mut team = Team::new();
        for _ in 0..3 {
            let counts: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
            let barrier = Barrier::new(4);
            team.run(4, &|share| {
                barrier.wait();
                counts[share].fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
        assert_eq!(team.members.len(), 4);
    }

    #[test]
    fn a_panicking_share_is_an_error_and_the_team_still_works() {
        let mut team = Team::new();
        let finished = AtomicUsize::new(0);
        let e = team
            .run(3, &|share| {
                assert_ne!(share, 2, "share 2 fails");
                finished.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap_err();
        assert!(matches!(e, Error::Worker { .. }), "{e}");
        assert_eq!(
            finished.load(Ordering::Relaxed),
            2,
            "the other shares finished"
        );
        let e = team
            .run(3, &|share| assert_ne!(share, 0, "share 0 fails"))
            .unwrap_err();
        assert!(matches!(e, Error::Worker { .. }), "{e}");
        team.run(3, &|_| {}).unwrap();
    }

    #[test]
    fn a_thread_that_cannot_start_is_an_error_before_any_share_runs() {
        let mut team = Team::new();
        team.stack_size = Some(1 << 62);
        let ran = AtomicUsize::new(0);
        let e = team
            .run(2, &|_| {
                ran.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("cannot start a decode thread"),
            "{e}"
        );
        assert_eq!(ran.load(Ordering::Relaxed), 0);
    }
}
