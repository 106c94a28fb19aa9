//! Quorum: is there a way to seat distinct approvers in every required slot?
//!
//! Each requirement `i` needs `quorum_i` approvers drawn from its groups, and
//! every requirement must be met at once. One human fills at most one slot,
//! even if they belong to several required groups — otherwise one person
//! could satisfy a "two of dba plus one of security" rule alone. That is a
//! bipartite matching between approvers and slots; a request is approved
//! exactly when a matching covers every slot.
//!
//! Whether an approval may fill a slot is decided by
//! [`Requirement::capacity`]: through the policy's own groups always, through
//! groups an escalation added only when the review came after the widening.

use std::collections::BTreeSet;

use crate::principal::PrincipalId;
use crate::request::{Requirement, Seat};

/// One approval to seat: who, the groups they reviewed in, and the position
/// of their review in the request (which slots were open to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The approver.
    pub id: PrincipalId,
    /// Their groups among the required ones, recorded at review time.
    pub groups: BTreeSet<String>,
    /// The review's position in the request's reviews.
    pub review: usize,
}

/// Finds an assignment of distinct approvers to every requirement's slots.
///
/// Duplicate ids count once (the first approval). Returns, per requirement
/// (same order), the seats filled, or `None` if no assignment satisfies
/// every requirement. A requirement with quorum 0 is treated as quorum 1:
/// review policies default to one approver.
pub fn assignment(requirements: &[Requirement], approvals: &[Approval]) -> Option<Vec<Vec<Seat>>> {
    let seated = seated(requirements, approvals);
    requirements
        .iter()
        .zip(&seated)
        .all(|(r, s)| s.len() == r.needed())
        .then_some(seated)
}

/// Where approvals stand: per requirement (same order), the seats filled by
/// a largest assignment of distinct approvers to slots. The same matching as
/// [`assignment`], kept when it cannot cover every slot, so a reviewer sees
/// "1 of 2 from dba" while a request waits. A slot left empty is one more
/// approval needed from that requirement's groups.
pub fn seated(requirements: &[Requirement], approvals: &[Approval]) -> Vec<Vec<Seat>> {
    // One entry per distinct approver.
    let mut people: Vec<&Approval> = Vec::new();
    for a in approvals {
        if !people.iter().any(|p| p.id == a.id) {
            people.push(a);
        }
    }
    // One slot per required approval, naming its requirement; never more
    // slots per requirement than there are people to fill them.
    let mut slots: Vec<usize> = Vec::new();
    for (i, r) in requirements.iter().enumerate() {
        slots.extend(std::iter::repeat_n(i, r.needed().min(people.len())));
    }
    // eligible[s][p]: may person p fill slot s?
    let eligible: Vec<Vec<bool>> = slots
        .iter()
        .map(|&i| {
            people
                .iter()
                .map(|p| requirements[i].capacity(&p.groups, p.review).is_some())
                .collect()
        })
        .collect();
    // seat[p] = the slot person p fills. Kuhn's augmenting paths: each slot in
    // turn either finds a free eligible person or displaces one who can move;
    // a slot that cannot be filled leaves the others as they were (the
    // matching stays maximum).
    let mut seat: Vec<Option<usize>> = vec![None; people.len()];
    for s in 0..slots.len() {
        let mut visited = vec![false; people.len()];
        augment(s, &eligible, &mut seat, &mut visited);
    }
    let mut out = vec![Vec::new(); requirements.len()];
    for (p, s) in seat.iter().enumerate() {
        let Some(s) = s else { continue };
        let r = &requirements[slots[*s]];
        let who = people[p];
        // Eligible, so it has a capacity.
        let Some(c) = r.capacity(&who.groups, who.review) else {
            continue;
        };
        out[slots[*s]].push(Seat {
            requirement: r.policy_id.clone(),
            approver: who.id.clone(),
            group: c.group,
            widened: c.widened,
        });
    }
    out
}

fn augment(
    slot: usize,
    eligible: &[Vec<bool>],
    seat: &mut [Option<usize>],
    visited: &mut [bool],
) -> bool {
    for p in 0..seat.len() {
        if eligible[slot][p] && !visited[p] {
            visited[p] = true;
            let free = match seat[p] {
                None => true,
                Some(other) => augment(other, eligible, seat, visited),
            };
            if free {
                seat[p] = Some(slot);
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(groups: &[&str], quorum: u32) -> Requirement {
        Requirement::new(
            format!("p-{}", groups.join("-")),
            groups.iter().map(|g| g.to_string()).collect(),
            quorum,
        )
    }

    fn person(name: &str, groups: &[&str]) -> Approval {
        Approval {
            id: PrincipalId::parse(&format!("user:{name}")).unwrap(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            review: 0,
        }
    }

    fn ids(seats: Vec<Vec<Seat>>) -> Vec<Vec<PrincipalId>> {
        seats
            .into_iter()
            .map(|v| v.into_iter().map(|s| s.approver).collect())
            .collect()
    }

    #[test]
    fn one_person_counts_once_across_groups() {
        let reqs = [req(&["dba"], 1), req(&["sec"], 1)];
        let both = person("bob", &["dba", "sec"]);
        assert!(assignment(&reqs, std::slice::from_ref(&both)).is_none());
        // The same person approving twice still counts once.
        assert!(assignment(&reqs, &[both.clone(), both.clone()]).is_none());
        let carol = person("carol", &["sec"]);
        let got = assignment(&reqs, &[both.clone(), carol.clone()]).unwrap();
        assert_eq!(ids(got), vec![vec![both.id], vec![carol.id]]);
    }

    #[test]
    fn needs_rearranging() {
        // Greedy would seat bob (dba,sec) in dba and leave sec empty.
        let reqs = [req(&["dba"], 1), req(&["sec"], 1)];
        let bob = person("bob", &["dba", "sec"]);
        let alice = person("alice", &["dba"]);
        let got = assignment(&reqs, &[bob.clone(), alice.clone()]).unwrap();
        assert_eq!(ids(got), vec![vec![alice.id], vec![bob.id]]);
    }

    #[test]
    fn quorum_counts_distinct_people() {
        let reqs = [req(&["dba", "ops"], 2)];
        assert!(assignment(&reqs, &[person("a", &["dba"])]).is_none());
        assert!(assignment(&reqs, &[person("a", &["dba"]), person("b", &["ops"])]).is_some());
        assert!(assignment(&reqs, &[person("a", &["dba"]), person("b", &["x"])]).is_none());
        // quorum 0 behaves as 1
        assert!(assignment(&[req(&["dba"], 0)], &[]).is_none());
        assert!(assignment(&[req(&["dba"], 0)], &[person("a", &["dba"])]).is_some());
        // no requirements: trivially satisfied (Request never builds this case
        // into an approval: nobody is eligible to review it)
        assert_eq!(assignment(&[], &[]), Some(vec![]));
    }

    /// Whether `p` may fill a slot of `r`, written out independently of
    /// [`Requirement::capacity`]: a group of the policy, or a group added
    /// by a widening that came no later than the review.
    fn may_fill(r: &Requirement, p: &Approval) -> bool {
        p.groups.iter().any(|g| {
            r.groups.contains(g)
                || r.widened
                    .iter()
                    .any(|w| &w.group == g && w.from_review <= p.review)
        })
    }

    #[test]
    fn seated_shows_partial_progress() {
        let reqs = [req(&["dba"], 2), req(&["sec"], 1)];
        assert_eq!(
            ids(seated(&reqs, &[])),
            vec![Vec::<PrincipalId>::new(), vec![]]
        );
        let bob = person("bob", &["dba", "sec"]);
        let got = seated(&reqs, std::slice::from_ref(&bob));
        assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 1);
        // carol (sec) arrives: bob moves to dba, carol takes sec.
        let carol = person("carol", &["sec"]);
        let got = seated(&reqs, &[bob.clone(), carol.clone(), bob.clone()]);
        assert_eq!(ids(got), vec![vec![bob.id.clone()], vec![carol.id.clone()]]);
        assert!(assignment(&reqs, &[bob, carol]).is_none());
    }

    /// The most slots any assignment fills, by trying every seat for every
    /// person (small inputs only).
    fn brute_max(slots: &[&Requirement], people: &[Approval], taken: &mut Vec<bool>) -> usize {
        let Some((first, rest)) = people.split_first() else {
            return 0;
        };
        let mut best = brute_max(slots, rest, taken);
        for s in 0..slots.len() {
            if !taken[s] && may_fill(slots[s], first) {
                taken[s] = true;
                best = best.max(1 + brute_max(slots, rest, taken));
                taken[s] = false;
            }
        }
        best
    }

    /// Exhaustive reference: try every way of giving each requirement a set
    /// of unused eligible people.
    fn brute(reqs: &[Requirement], people: &[Approval], used: u32) -> bool {
        let Some((first, rest)) = reqs.split_first() else {
            return true;
        };
        let n = people.len();
        (0u32..(1 << n)).any(|mask| {
            mask & used == 0
                && mask.count_ones() as usize == first.needed()
                && (0..n)
                    .filter(|p| mask & (1 << p) != 0)
                    .all(|p| may_fill(first, &people[p]))
                && brute(rest, people, used | mask)
        })
    }

    #[test]
    fn a_widened_slot_takes_only_later_reviews() {
        use crate::request::Widening;
        // sec widened to dba after two reviews: a dba approval at position
        // 0 or 1 fills only the dba slot; one at position 2 may fill sec.
        let mut sec = req(&["sec"], 1);
        sec.widened.push(Widening {
            group: "dba".into(),
            from_review: 2,
        });
        let reqs = [req(&["dba"], 1), sec];
        let at = |name: &str, review: usize| Approval {
            review,
            ..person(name, &["dba"])
        };
        assert!(assignment(&reqs, &[at("a", 0), at("b", 1)]).is_none());
        let got = assignment(&reqs, &[at("a", 0), at("c", 2)]).unwrap();
        assert_eq!(got[0][0].approver, at("a", 0).id);
        assert!(!got[0][0].widened);
        assert_eq!(
            got[1][0],
            Seat {
                requirement: "p-sec".into(),
                approver: at("c", 2).id,
                group: "dba".into(),
                widened: true,
            }
        );
    }

    proptest! {
        #[test]
        fn matches_brute_force(
            reqs in prop::collection::vec(
                (prop::collection::vec(0usize..4, 1..3), 1u32..3,
                 prop::collection::vec((0usize..4, 0usize..6), 0..2)),
                0..4),
            people in prop::collection::vec(
                (prop::collection::btree_set(0usize..4, 0..4), 0usize..6), 0..6),
        ) {
            use crate::request::Widening;
            let names = ["dba", "sec", "ops", "data"];
            let reqs: Vec<Requirement> = reqs.iter().map(|(gs, q, ws)| {
                let mut r = Requirement::new(
                    "p",
                    gs.iter().map(|g| names[*g].to_string()).collect(),
                    *q,
                );
                r.widened = ws.iter().map(|(g, from)| Widening {
                    group: names[*g].to_string(),
                    from_review: *from,
                }).collect();
                r
            }).collect();
            let people: Vec<Approval> = people.iter().enumerate().map(|(i, (gs, review))| Approval {
                id: PrincipalId::parse(&format!("user:u{i}")).unwrap(),
                groups: gs.iter().map(|g| names[*g].to_string()).collect(),
                review: *review,
            }).collect();
            let got = assignment(&reqs, &people);
            prop_assert_eq!(got.is_some(), brute(&reqs, &people, 0));
            // Distinct people (the first approval of each counts).
            let mut distinct: Vec<Approval> = Vec::new();
            for p in &people {
                if !distinct.iter().any(|d| d.id == p.id) {
                    distinct.push(p.clone());
                }
            }
            let partial = seated(&reqs, &people);
            let slots: Vec<&Requirement> = reqs.iter().flat_map(|r| std::iter::repeat_n(r, r.needed())).collect();
            let most = brute_max(&slots, &distinct, &mut vec![false; slots.len()]);
            prop_assert_eq!(partial.iter().map(Vec::len).sum::<usize>(), most);
            let mut seen = BTreeSet::new();
            for (r, s) in reqs.iter().zip(&partial) {
                prop_assert!(s.len() <= r.needed());
                for seat in s {
                    prop_assert!(seen.insert(seat.approver.clone()), "{} seated twice", seat.approver);
                    prop_assert!(may_fill(r, distinct.iter().find(|p| p.id == seat.approver).unwrap()));
                }
            }
            if let Some(seats) = got {
                let mut seen = BTreeSet::new();
                for (r, seated) in reqs.iter().zip(&seats) {
                    prop_assert_eq!(seated.len(), r.needed());
                    for s in seated {
                        prop_assert!(seen.insert(s.approver.clone()), "{} seated twice", s.approver);
                        let p = people.iter().find(|p| p.id == s.approver).unwrap();
                        prop_assert!(may_fill(r, p));
                        prop_assert!(p.groups.contains(&s.group));
                        // widened exactly when the policy's groups did not admit
                        prop_assert_eq!(s.widened, !r.groups.iter().any(|g| p.groups.contains(g)));
                    }
                }
            }
        }
    }
}
