//! Live moves, in the RCM: the source migrates each resource (migrate_to), the target
//! prepares for it beforehand and completes it afterwards (migrate_from), and a failed
//! migration either abandons the move or lets the rest of the group follow cold. The
//! per-resource part in a move is its [`Leg`].

use super::memory::{Abandoned, STEP_RESEND_MS};
use super::*;

/// A resource's part in a live move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Leg {
    /// Source: migrate_to (to this node) in flight.
    Sending(String),
    /// Source: migrated to this node; what is left here is stopped once it has completed.
    Sent(String),
    /// Target, before the cutover: prepared to receive the instance from this node.
    Incoming(String),
    /// Target: migrate_from issued (a later restart is a plain start).
    Receiving,
}

impl Rcm {
    pub(super) fn leg(&self, resource: &str) -> Option<&Leg> {
        self.resources.get(resource).and_then(|l| l.leg.as_ref())
    }

    pub(super) fn is_sent(&self, resource: &str) -> bool {
        matches!(self.leg(resource), Some(Leg::Sent(_)))
    }

    pub(super) fn set_leg(&mut self, resource: &str, leg: Option<Leg>) {
        if let Some(l) = self.resources.get_mut(resource) {
            l.leg = leg;
        }
    }

    /// A migrate_to failed (the type left the resource running here). If nothing of the
    /// group has migrated yet, the move is abandoned and the group stays here; otherwise the
    /// rest of the group follows cold (stopped here, started on the target), so that nothing
    /// is left running without an owner.
    pub(super) fn migration_failed(&mut self, out: &mut Out, name: &str, reason: &str) {
        let Some(group) = out.db.resources.get(name).map(|r| r.group.clone()) else {
            return;
        };
        let Some(g) = out.db.groups.get(&group) else {
            return;
        };
        let target = g.moving.as_ref().map_or("?", |m| m.to.as_str()).to_string();
        let sent = out
            .db
            .group_resources(&group)
            .any(|r| self.is_sent(&r.name));
        if sent {
            self.memory.at(&group, g.epoch).cold = true;
            self.log_resource(
                out,
                name,
                format!(
                    "live migration to {target} failed ({reason}); others already migrated: the rest of the group moves cold"
                ),
            );
        } else {
            self.log_resource(
                out,
                name,
                format!(
                    "live migration to {target} failed ({reason}): the group stays on {}",
                    self.node
                ),
            );
            if let Some(m) = &g.moving {
                let failed = format!("live migration of {name} failed: {reason}");
                self.memory.at(&group, g.epoch).abandoned = Some(Abandoned {
                    to: m.to.clone(),
                    reason: failed.clone(),
                    sent_ms: out.now,
                });
                out.push(Action::Db(Command::CancelMove {
                    group,
                    failed: Some(failed),
                }));
            }
        }
    }

    /// Live moves to this node: before the source migrates anything, get each resource ready
    /// to receive its instance (tracked here, so that fencing ends it too); drop what was
    /// prepared for a move that is over without arriving.
    pub(super) fn prepare_incoming(&mut self, out: &mut Out) {
        let db = out.db;
        for g in db.groups.values() {
            let Some(m) = g.moving.as_ref().filter(|m| m.live && m.to == self.node) else {
                continue;
            };
            let Some(source) = g.owner.clone() else {
                continue;
            };
            for r in db.group_resources(&g.name) {
                let local = self.resources.entry(r.name.clone()).or_default();
                if local.leg.is_some() || local.state != ResourceState::Offline {
                    continue;
                }
                local.leg = Some(Leg::Incoming(source.clone()));
                out.push(Action::MigratePrepare {
                    resource: r.name.clone(),
                    source: source.clone(),
                    quick: m.quick,
                });
            }
        }
        let stale: Vec<String> = self
            .resources
            .iter()
            .filter(|(name, l)| {
                let Some(Leg::Incoming(source)) = &l.leg else {
                    return false;
                };
                if l.state != ResourceState::Offline {
                    return false;
                }
                let Some(g) = db
                    .resources
                    .get(*name)
                    .and_then(|r| db.groups.get(&r.group))
                else {
                    return true;
                };
                let still_coming = g
                    .moving
                    .as_ref()
                    .is_some_and(|m| m.live && m.to == self.node)
                    && g.owner.as_ref() == Some(source);
                let arrived = g.owner.as_deref() == Some(self.node.as_str())
                    && g.migration.as_ref().is_some_and(|mi| &mi.from == source);
                !still_coming && !arrived
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.set_leg(&name, None);
            out.push(Action::Terminate {
                resource: name.clone(),
            });
            if db.resources.get(&name).is_none_or(|r| {
                db.groups.get(&r.group).and_then(|g| g.owner.as_deref()) != Some(&self.node)
            }) {
                self.resources.remove(&name);
                out.push(Action::Close { resource: name });
            }
        }
    }

    /// A live move, on the source: migrate the running resources to the target one at a time
    /// (providers first), then write the new owner. Nothing is stopped here until the target
    /// has completed the migration (see [`Rcm::take_offline`]).
    pub(super) fn live_move(&mut self, out: &mut Out, group: &str, order: &[String], now: u64) {
        let db = out.db;
        let Some(g) = db.groups.get(group) else {
            return;
        };
        let Some(m) = g.moving() else {
            return;
        };
        let abandoned = self
            .memory
            .get(group, g.epoch)
            .and_then(|x| x.abandoned.as_ref());
        if let Some(a) = abandoned.filter(|a| a.to == m.to).cloned() {
            // Our CancelMove is on its way; written again if it seems lost.
            if now >= a.sent_ms + STEP_RESEND_MS {
                out.push(Action::Db(Command::CancelMove {
                    group: group.to_string(),
                    failed: Some(a.reason.clone()),
                }));
                self.memory.at(group, g.epoch).abandoned = Some(Abandoned { sent_ms: now, ..a });
            }
            return;
        }
        // The failover manager retargeted the move (its target went Down) after resources
        // had migrated there: those instances died with it; recover them here.
        let stranded: Vec<String> = order
            .iter()
            .filter(|n| matches!(self.leg(n), Some(Leg::Sent(to)) if *to != m.to))
            .cloned()
            .collect();
        for name in stranded {
            let why = format!(
                "migrated to a node that went Down; the move now goes to {}: recovering here",
                m.to
            );
            self.fail(out, &name, &why, now, Found::BY_RCM);
        }
        let settling = order.iter().any(|n| {
            matches!(
                self.state(n),
                ResourceState::OnlinePending | ResourceState::OfflinePending
            ) || matches!(self.leg(n), Some(Leg::Sending(_)))
        });
        if settling {
            return;
        }
        if self.memory.get(group, g.epoch).is_some_and(|x| x.cold) {
            // Stop what did not migrate, dependents first, before handing over.
            let unsent = |rcm: &Self, n: &str| !rcm.is_sent(n);
            for name in order.iter().rev() {
                if !self.state(name).may_run() || !unsent(self, name) {
                    continue;
                }
                let dependents_stopped = db
                    .group_resources(group)
                    .filter(|d| d.depends_on.contains(name) && unsent(self, &d.name))
                    .all(|d| !self.state(&d.name).may_run());
                if dependents_stopped {
                    let reason = format!("moving cold to {} (its live migration failed)", m.to);
                    if let Some(l) = self.resources.get_mut(name) {
                        l.progress_ms = now;
                    }
                    self.transition(out, name, ResourceState::OfflinePending, &reason, None);
                    out.push(Action::Offline {
                        resource: name.clone(),
                    });
                }
            }
            if order
                .iter()
                .any(|n| unsent(self, n) && self.state(n).may_run())
            {
                return;
            }
        } else if let Some(next) = order
            .iter()
            .find(|n| self.state(n) == ResourceState::Online && self.leg(n).is_none())
        {
            self.set_leg(next, Some(Leg::Sending(m.to.clone())));
            self.log_resource(
                out,
                next,
                format!(
                    "{} migration to {} ({} move): migrate_to started",
                    if m.quick { "quick" } else { "live" },
                    m.to,
                    m.kind
                ),
            );
            out.push(Action::MigrateTo {
                resource: next.clone(),
                target: m.to.clone(),
                quick: m.quick,
            });
            return;
        }
        if self.memory.pending(group, g.epoch, |x| x.handed, now) {
            return;
        }
        self.memory.at(group, g.epoch).handed = Some(now);
        let migrated: Vec<String> = order.iter().filter(|n| self.is_sent(n)).cloned().collect();
        out.push(Action::Db(Command::MigratedOwner {
            group: group.to_string(),
            node: m.to.clone(),
            resources: migrated.clone(),
        }));
        let reason = format!(
            "migrated {} to {}: ownership moves at the cutover ({} move)",
            if migrated.is_empty() {
                "nothing (nothing ran)".to_string()
            } else {
                migrated.join(", ")
            },
            m.to,
            m.kind
        );
        out.push(Action::Log(
            LogEntry::new(Component::RCM, reason)
                .group(group, g.epoch)
                .change(&self.node, &m.to),
        ));
    }

    /// A live move, on the target: once every migrated resource has been completed (or has
    /// failed, or is not wanted), say so, so that the source stops what is left there.
    pub(super) fn complete_migration(
        &mut self,
        out: &mut Out,
        group: &str,
        order: &[String],
        want: &BTreeMap<&str, bool>,
    ) {
        let Some(g) = out.db.groups.get(group) else {
            return;
        };
        let Some(mi) = &g.migration else {
            // Completed: later restarts of these resources are plain starts.
            for name in order {
                if self.leg(name) == Some(&Leg::Receiving) {
                    self.set_leg(name, None);
                }
            }
            return;
        };
        if mi.from == self.node
            || self
                .memory
                .pending(group, g.epoch, |x| x.completed, out.now)
        {
            return;
        }
        let done = mi.resources.iter().all(|n| {
            let state = self.state(n);
            state != ResourceState::OnlinePending
                && (self.leg(n) == Some(&Leg::Receiving)
                    || state == ResourceState::Failed
                    || !want.get(n.as_str()).copied().unwrap_or(false))
        });
        if !done {
            return;
        }
        self.memory.at(group, g.epoch).completed = Some(out.now);
        out.push(Action::Db(Command::EndMigration {
            group: group.to_string(),
        }));
        let reason = format!(
            "live migration from {} complete on {}: {} may stop what is left there",
            mi.from, self.node, mi.from
        );
        out.push(Action::Log(
            LogEntry::new(Component::RCM, reason).group(group, g.epoch),
        ));
    }
}
