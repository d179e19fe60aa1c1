//! What the RCM remembers of each group between passes: the steps it has written that the
//! database may not show yet. One record per group, for one epoch of it.
//!
//! One rule forgets: a new epoch (the group changed owner) ends every step this node took for
//! the old one, so the whole record goes at once. Within an epoch, each step is forgotten as
//! soon as the database shows it done or moot ([`GroupMemory::forget_done`]).

use std::collections::BTreeMap;

use crate::model::{ClusterState, Group};

/// How long a step of a handover this node wrote (the new owner, the end of a migration, a
/// cancelled move) may go unseen in the database before it is written again: longer than a
/// write's timeout (5 s), so that only a write that surely failed is repeated; a repeat that
/// finds the step done is refused or changes nothing.
pub(super) const STEP_RESEND_MS: u64 = 6_000;
/// How long a failover request may go unanswered (its write lost) before it is sent again.
pub(super) const REQUEST_RESEND_MS: u64 = 10_000;

/// One group's record, for epoch `epoch` of it.
#[derive(Debug, Default)]
pub(super) struct GroupMemory {
    pub epoch: u64,
    /// This node asked for the group's failover, at this time; the group is held here until
    /// the database shows the request (or its answer).
    pub requested: Option<u64>,
    /// This node wrote the group's new owner (a handover, or a migration's cutover), at this
    /// time.
    pub handed: Option<u64>,
    /// This node, the target of a live move, declared its migration complete, at this time.
    pub completed: Option<u64>,
    /// A migrate_to failed after other resources of the group had migrated: the rest of the
    /// group moves cold (stopped here, started there).
    pub cold: bool,
    /// A live move abandoned here after a failed migrate_to, until the database shows it
    /// cancelled: nothing is migrated again meanwhile.
    pub abandoned: Option<Abandoned>,
}

#[derive(Clone, Debug)]
pub(super) struct Abandoned {
    /// The move's target.
    pub to: String,
    /// Why, as written with the cancel.
    pub reason: String,
    pub sent_ms: u64,
}

impl GroupMemory {
    /// Forgets the steps the database shows done or moot: a request once the group is held
    /// (or not ours), a handover once no move is under way, a completion once the migration
    /// is over, an abandoned move once the database no longer moves the group there.
    fn forget_done(&mut self, g: &Group, me: &str) {
        if g.owner.as_deref() != Some(me) || g.is_held() {
            self.requested = None;
        }
        if g.moving.is_none() {
            self.handed = None;
        }
        if g.migration.is_none() {
            self.completed = None;
        }
        if self
            .abandoned
            .as_ref()
            .is_some_and(|a| g.moving.as_ref().is_none_or(|m| m.to != a.to))
        {
            self.abandoned = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.requested.is_none()
            && self.handed.is_none()
            && self.completed.is_none()
            && !self.cold
            && self.abandoned.is_none()
    }

    /// The times at which a step is due to be written again.
    fn resends(&self) -> impl Iterator<Item = u64> + '_ {
        let steps = [
            self.handed,
            self.completed,
            self.abandoned.as_ref().map(|a| a.sent_ms),
        ];
        let requested = self.requested.map(|t| t + REQUEST_RESEND_MS);
        steps
            .into_iter()
            .flatten()
            .map(|t| t + STEP_RESEND_MS)
            .chain(requested)
    }

    /// A step due but not written again in this pass (it no longer applies as it was) is put
    /// off, so that no timer stays in the past (it would wake the loop forever).
    fn put_off(&mut self, now: u64) {
        let abandoned = self.abandoned.as_mut().map(|a| &mut a.sent_ms);
        for t in [self.handed.as_mut(), self.completed.as_mut(), abandoned]
            .into_iter()
            .flatten()
        {
            if *t + STEP_RESEND_MS <= now {
                *t = now;
            }
        }
    }
}

/// Every group's record.
#[derive(Debug, Default)]
pub(super) struct Memory(BTreeMap<String, GroupMemory>);

impl Memory {
    /// The group's record for `epoch`, if it has one.
    pub fn get(&self, group: &str, epoch: u64) -> Option<&GroupMemory> {
        self.0.get(group).filter(|m| m.epoch == epoch)
    }

    /// The group's record for `epoch`: a record of another epoch is forgotten first.
    pub fn at(&mut self, group: &str, epoch: u64) -> &mut GroupMemory {
        let m = self.0.entry(group.to_string()).or_default();
        if m.epoch != epoch {
            *m = GroupMemory {
                epoch,
                ..GroupMemory::default()
            };
        }
        m
    }

    /// The one rule: what the database shows for another epoch, or done, is forgotten.
    pub fn forget(&mut self, db: &ClusterState, me: &str) {
        self.0.retain(|group, m| {
            let Some(g) = db.groups.get(group).filter(|g| g.epoch == m.epoch) else {
                return false;
            };
            m.forget_done(g, me);
            !m.is_empty()
        });
    }

    /// The groups whose failover request is due to be sent again.
    pub fn requests_due(&self, now: u64) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, m)| m.requested.is_some_and(|t| now >= t + REQUEST_RESEND_MS))
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Whether `group` (at `epoch`) has the step `which` written less than
    /// [`STEP_RESEND_MS`] ago.
    pub fn pending(
        &self,
        group: &str,
        epoch: u64,
        which: impl Fn(&GroupMemory) -> Option<u64>,
        now: u64,
    ) -> bool {
        self.get(group, epoch)
            .and_then(which)
            .is_some_and(|t| now < t + STEP_RESEND_MS)
    }

    pub fn next_resend_ms(&self) -> Option<u64> {
        self.0.values().flat_map(GroupMemory::resends).min()
    }

    pub fn put_off(&mut self, now: u64) {
        for m in self.0.values_mut() {
            m.put_off(now);
        }
    }

    /// An operator acted on the group: its request is moot.
    pub fn forget_request(&mut self, group: &str) {
        if let Some(m) = self.0.get_mut(group) {
            m.requested = None;
        }
    }
}
