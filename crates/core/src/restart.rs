//! The restart policy: after a failure, restart in place (after `restart_delay_ms`) as long as
//! no more than `restart_threshold` restarts fell within the last `restart_period_s`; then do
//! what `restart_action` says.

use std::collections::VecDeque;

use crate::props::{ResourceProps, RestartAction};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Restart in place at this time; `attempt` of `threshold` within the period.
    RestartAt {
        at_ms: u64,
        attempt: u32,
        threshold: u32,
    },
    /// Restarts exhausted (or none allowed): hand the group to the failover manager.
    Failover,
    /// Leave the resource Failed; try again after `retry_period_on_failure_s`.
    StayFailed { retry_at_ms: u64 },
}

/// Failure times of one resource within its restart period; bounded by the threshold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    failures_ms: VecDeque<u64>,
}

impl History {
    /// Records a failure at `now_ms` and decides what to do about it.
    pub fn on_failure(&mut self, props: &ResourceProps, now_ms: u64) -> Decision {
        let period_ms = props.restart_period_s.saturating_mul(1_000);
        while self
            .failures_ms
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= period_ms)
        {
            self.failures_ms.pop_front();
        }
        self.failures_ms.push_back(now_ms);
        let limit = props.restart_threshold as usize + 1;
        while self.failures_ms.len() > limit {
            self.failures_ms.pop_front();
        }
        let attempt = self.failures_ms.len() as u32;
        let give_up = || Decision::StayFailed {
            retry_at_ms: now_ms + props.retry_period_on_failure_s.saturating_mul(1_000),
        };
        match props.restart_action {
            RestartAction::None => give_up(),
            _ if attempt <= props.restart_threshold => Decision::RestartAt {
                at_ms: now_ms + props.restart_delay_ms,
                attempt,
                threshold: props.restart_threshold,
            },
            RestartAction::Restart => give_up(),
            RestartAction::RestartThenFailover => Decision::Failover,
        }
    }

    /// Records a failure that no restart on this node can mend (a configuration error
    /// here): fail over when the restart action allows it, else stay Failed.
    pub fn on_failure_not_here(&mut self, props: &ResourceProps, now_ms: u64) -> Decision {
        self.failures_ms.push_back(now_ms);
        match props.restart_action {
            RestartAction::RestartThenFailover => Decision::Failover,
            RestartAction::None | RestartAction::Restart => Decision::StayFailed {
                retry_at_ms: now_ms + props.retry_period_on_failure_s.saturating_mul(1_000),
            },
        }
    }

    /// Forgets past failures (a retry after `retry_period_on_failure_s`, an operator's online).
    pub fn reset(&mut self) {
        self.failures_ms.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(action: RestartAction, threshold: u32, period_s: u64, delay_ms: u64) -> ResourceProps {
        ResourceProps {
            restart_action: action,
            restart_threshold: threshold,
            restart_period_s: period_s,
            restart_delay_ms: delay_ms,
            ..ResourceProps::default()
        }
    }

    #[test]
    fn restarts_up_to_threshold_within_period_then_fails_over() {
        let p = props(RestartAction::RestartThenFailover, 3, 900, 500);
        let mut h = History::default();
        for (i, t) in [0u64, 1_000, 2_000].into_iter().enumerate() {
            assert_eq!(
                h.on_failure(&p, t),
                Decision::RestartAt {
                    at_ms: t + 500,
                    attempt: i as u32 + 1,
                    threshold: 3
                }
            );
        }
        assert_eq!(h.on_failure(&p, 3_000), Decision::Failover);
    }

    #[test]
    fn failures_older_than_the_period_are_forgotten() {
        let p = props(RestartAction::Restart, 2, 10, 0);
        let mut h = History::default();
        assert!(matches!(
            h.on_failure(&p, 0),
            Decision::RestartAt { attempt: 1, .. }
        ));
        assert!(matches!(
            h.on_failure(&p, 5_000),
            Decision::RestartAt { attempt: 2, .. }
        ));
        // The failure at 0 s is 10 s old: out of the period.
        assert!(matches!(
            h.on_failure(&p, 10_000),
            Decision::RestartAt { attempt: 2, .. }
        ));
        assert!(matches!(
            h.on_failure(&p, 11_000),
            Decision::StayFailed { .. }
        ));
    }

    #[test]
    fn restart_then_give_up_and_none() {
        let p = props(RestartAction::Restart, 1, 900, 0);
        let mut h = History::default();
        assert!(matches!(h.on_failure(&p, 0), Decision::RestartAt { .. }));
        assert_eq!(
            h.on_failure(&p, 1),
            Decision::StayFailed {
                retry_at_ms: 1 + 3_600_000
            }
        );
        let p = props(RestartAction::None, 3, 900, 0);
        assert!(matches!(
            History::default().on_failure(&p, 0),
            Decision::StayFailed { .. }
        ));
        let p = props(RestartAction::RestartThenFailover, 0, 900, 0);
        assert_eq!(History::default().on_failure(&p, 0), Decision::Failover);
    }

    #[test]
    fn reset_starts_counting_again() {
        let p = props(RestartAction::RestartThenFailover, 1, 900, 0);
        let mut h = History::default();
        h.on_failure(&p, 0);
        assert_eq!(h.on_failure(&p, 1), Decision::Failover);
        h.reset();
        assert!(matches!(
            h.on_failure(&p, 2),
            Decision::RestartAt { attempt: 1, .. }
        ));
    }
}
