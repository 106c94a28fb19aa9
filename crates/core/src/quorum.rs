//! Quorum: is there a way to seat distinct approvers in every required slot?
//!
//! Each requirement `i` needs `quorum_i` approvers drawn from its groups, and
//! every requirement must be met at once. One human fills at most one slot,
//! even if they belong to several required groups — otherwise one person
//! could satisfy a "two of dba plus one of security" rule alone. That is a
//! bipartite matching between approvers and slots; a request is approved
//! exactly when a matching covers every slot.

use std::collections::BTreeSet;

use crate::principal::PrincipalId;
use crate::request::Requirement;

/// Finds an assignment of distinct approvers to every requirement's slots.
///
/// `approvers` are `(id, groups)` pairs; duplicate ids count once. Returns,
/// per requirement (same order), the approvers seated in its slots, or `None`
/// if no assignment satisfies every requirement. A requirement with quorum 0
/// is treated as quorum 1: review policies default to one approver.
pub fn assignment(
    requirements: &[Requirement],
    approvers: &[(PrincipalId, BTreeSet<String>)],
) -> Option<Vec<Vec<PrincipalId>>> {
    let seated = seated(requirements, approvers);
    requirements
        .iter()
        .zip(&seated)
        .all(|(r, s)| s.len() == r.needed())
        .then_some(seated)
}

/// Where approvals stand: per requirement (same order), the approvers seated
/// in its slots by a largest assignment of distinct approvers to slots. The
/// same matching as [`assignment`], kept when it cannot cover every slot, so
/// a reviewer sees "1 of 2 from dba" while a request waits. A slot left empty
/// is one more approval needed from that requirement's groups.
pub fn seated(
    requirements: &[Requirement],
    approvers: &[(PrincipalId, BTreeSet<String>)],
) -> Vec<Vec<PrincipalId>> {
    // One entry per distinct approver.
    let mut people: Vec<&(PrincipalId, BTreeSet<String>)> = Vec::new();
    for a in approvers {
        if !people.iter().any(|p| p.0 == a.0) {
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
                .map(|p| requirements[i].admits(&p.1))
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
        if let Some(s) = s {
            out[slots[*s]].push(people[p].0.clone());
        }
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
        Requirement {
            policy_id: format!("p-{}", groups.join("-")),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            quorum,
            reason: None,
        }
    }

    fn person(name: &str, groups: &[&str]) -> (PrincipalId, BTreeSet<String>) {
        (
            PrincipalId::parse(&format!("user:{name}")).unwrap(),
            groups.iter().map(|g| g.to_string()).collect(),
        )
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
        assert_eq!(got, vec![vec![both.0], vec![carol.0]]);
    }

    #[test]
    fn needs_rearranging() {
        // Greedy would seat bob (dba,sec) in dba and leave sec empty.
        let reqs = [req(&["dba"], 1), req(&["sec"], 1)];
        let bob = person("bob", &["dba", "sec"]);
        let alice = person("alice", &["dba"]);
        let got = assignment(&reqs, &[bob.clone(), alice.clone()]).unwrap();
        assert_eq!(got, vec![vec![alice.0], vec![bob.0]]);
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

    #[test]
    fn seated_shows_partial_progress() {
        let reqs = [req(&["dba"], 2), req(&["sec"], 1)];
        assert_eq!(seated(&reqs, &[]), vec![Vec::<PrincipalId>::new(), vec![]]);
        let bob = person("bob", &["dba", "sec"]);
        let got = seated(&reqs, std::slice::from_ref(&bob));
        assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 1);
        // carol (sec) arrives: bob moves to dba, carol takes sec.
        let carol = person("carol", &["sec"]);
        let got = seated(&reqs, &[bob.clone(), carol.clone(), bob.clone()]);
        assert_eq!(got, vec![vec![bob.0.clone()], vec![carol.0.clone()]]);
        assert!(assignment(&reqs, &[bob, carol]).is_none());
    }

    /// The most slots any assignment fills, by trying every seat for every
    /// person (small inputs only).
    fn brute_max(
        slots: &[&Requirement],
        people: &[(PrincipalId, BTreeSet<String>)],
        taken: &mut Vec<bool>,
    ) -> usize {
        let Some((first, rest)) = people.split_first() else {
            return 0;
        };
        let mut best = brute_max(slots, rest, taken);
        for s in 0..slots.len() {
            if !taken[s] && slots[s].admits(&first.1) {
                taken[s] = true;
                best = best.max(1 + brute_max(slots, rest, taken));
                taken[s] = false;
            }
        }
        best
    }

    /// Exhaustive reference: try every way of giving each requirement a set
    /// of unused eligible people.
    fn brute(reqs: &[Requirement], people: &[(PrincipalId, BTreeSet<String>)], used: u32) -> bool {
        let Some((first, rest)) = reqs.split_first() else {
            return true;
        };
        let n = people.len();
        (0u32..(1 << n)).any(|mask| {
            mask & used == 0
                && mask.count_ones() as usize == first.needed()
                && (0..n)
                    .filter(|p| mask & (1 << p) != 0)
                    .all(|p| first.admits(&people[p].1))
                && brute(rest, people, used | mask)
        })
    }

    proptest! {
        #[test]
        fn matches_brute_force(
            reqs in prop::collection::vec((prop::collection::vec(0usize..4, 1..3), 1u32..3), 0..4),
            people in prop::collection::vec(prop::collection::btree_set(0usize..4, 0..4), 0..6),
        ) {
            let names = ["dba", "sec", "ops", "data"];
            let reqs: Vec<Requirement> = reqs.iter().map(|(gs, q)| Requirement {
                policy_id: "p".into(),
                groups: gs.iter().map(|g| names[*g].to_string()).collect(),
                quorum: *q,
                reason: None,
            }).collect();
            let people: Vec<(PrincipalId, BTreeSet<String>)> = people.iter().enumerate().map(|(i, gs)| (
                PrincipalId::parse(&format!("user:u{i}")).unwrap(),
                gs.iter().map(|g| names[*g].to_string()).collect(),
            )).collect();
            let got = assignment(&reqs, &people);
            prop_assert_eq!(got.is_some(), brute(&reqs, &people, 0));
            let partial = seated(&reqs, &people);
            let slots: Vec<&Requirement> = reqs.iter().flat_map(|r| std::iter::repeat_n(r, r.needed())).collect();
            let most = brute_max(&slots, &people, &mut vec![false; slots.len()]);
            prop_assert_eq!(partial.iter().map(Vec::len).sum::<usize>(), most);
            let mut seen = BTreeSet::new();
            for (r, s) in reqs.iter().zip(&partial) {
                prop_assert!(s.len() <= r.needed());
                for id in s {
                    prop_assert!(seen.insert(id.clone()), "{} seated twice", id);
                    prop_assert!(r.admits(&people.iter().find(|p| &p.0 == id).unwrap().1));
                }
            }
            if let Some(seats) = got {
                let mut seen = BTreeSet::new();
                for (r, seated) in reqs.iter().zip(&seats) {
                    prop_assert_eq!(seated.len(), r.needed());
                    for id in seated {
                        prop_assert!(seen.insert(id.clone()), "{} seated twice", id);
                        let groups = &people.iter().find(|p| &p.0 == id).unwrap().1;
                        prop_assert!(r.admits(groups));
                    }
                }
            }
        }
    }
}
