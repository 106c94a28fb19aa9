use super::*;
use serde_json::json;

fn id(s: &str) -> PrincipalId {
    PrincipalId::parse(s).unwrap()
}

fn user(name: &str, groups: &[&str]) -> Principal {
    Principal {
        id: id(&format!("user:{name}")),
        owner: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        subjects: Default::default(),
    }
}

fn req_of(groups: &[&str], quorum: u32) -> Requirement {
    Requirement::new(
        format!("review-{}", groups.join("-")),
        groups.iter().map(|g| g.to_string()).collect(),
        quorum,
    )
}

/// agent:bot owned by alice asks, on behalf of user:olivia (backed); dba
/// and sec each need one approver; ttl 1000 ms, grant ttl 100 ms, created
/// at 0.
fn request(requirements: Vec<Requirement>) -> Request {
    let raw = json!({"kind": "sql", "operation": "delete", "resource": "db://prod/t",
                     "on_behalf_of": "user:olivia"});
    let (action, digest) = Action::from_json(&raw).unwrap();
    let requester = Principal {
        id: id("agent:bot"),
        owner: Some(id("user:alice")),
        groups: ["agents".to_string()].into(),
        subjects: Default::default(),
    };
    Request::new(
        "req-1".into(),
        digest,
        action,
        requester,
        requirements,
        Duration::from_millis(1000),
        Duration::from_millis(100),
        Timestamp(0),
    )
    .with_on_behalf_of_backed(true)
}

fn two_groups() -> Request {
    request(vec![req_of(&["dba"], 1), req_of(&["sec"], 1)])
}

fn approve(r: &mut Request, who: &Principal, at: i64) -> Result<Transition, ReviewError> {
    r.review(who, ReviewDecision::Approve, None, Timestamp(at), "grant-1")
}

/// Runs `f` and checks the request did not change when it failed.
fn unchanged_on_err<T, E: std::fmt::Debug>(
    r: &mut Request,
    f: impl FnOnce(&mut Request) -> Result<T, E>,
) -> E {
    let before = r.clone();
    let e = match f(r) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };
    assert_eq!(*r, before, "a failed call changed the request: {e:?}");
    e
}

#[test]
fn approval_needs_distinct_humans_for_every_requirement() {
    let mut r = two_groups();
    let bob = user("bob", &["dba", "sec"]);
    let t = approve(&mut r, &bob, 10).unwrap();
    assert_eq!(
        (t.from, t.to),
        (RequestState::Pending, RequestState::Pending)
    );
    assert_eq!(t.events.len(), 1);
    assert!(r.grant.is_none());
    // bob again: duplicate, even though he is in both groups
    let e = unchanged_on_err(&mut r, |r| approve(r, &bob, 11));
    assert_eq!(e.code(), "duplicate_reviewer");
    let carol = user("carol", &["dba"]);
    let t = approve(&mut r, &carol, 12).unwrap();
    assert_eq!(t.to, RequestState::Approved);
    assert_eq!(
        t.events[1],
        CoreEvent::Approved {
            grant_id: "grant-1".into(),
            approvers: vec![bob.id.clone(), carol.id.clone()],
            seats: vec![
                Seat {
                    requirement: "review-dba".into(),
                    approver: carol.id.clone(),
                    group: "dba".into(),
                    widened: false,
                },
                Seat {
                    requirement: "review-sec".into(),
                    approver: bob.id.clone(),
                    group: "sec".into(),
                    widened: false,
                },
            ],
        }
    );
    assert_eq!(r.grant.as_ref().map(|g| g.expires_at), Some(Timestamp(112)));
    assert_eq!(r.decided_at, Some(Timestamp(12)));
    assert_eq!(r.assignment(), Some(vec![vec![carol.id], vec![bob.id]]));
}

#[test]
fn quorum_two_in_one_group() {
    let mut r = request(vec![req_of(&["dba"], 2)]);
    approve(&mut r, &user("a", &["dba"]), 1).unwrap();
    assert_eq!(r.state, RequestState::Pending);
    approve(&mut r, &user("b", &["dba"]), 2).unwrap();
    assert_eq!(r.state, RequestState::Approved);
}

/// The requester's identity-provider account is one person, whatever
/// principal id it signs in as elsewhere: that reviewer is refused like the
/// requester; another account with the same groups is not.
#[test]
fn the_requesters_account_never_reviews() {
    let mut r = request(vec![req_of(&["dba"], 1)]);
    r.requester.subjects = ["https://idp|bob".to_string()].into();
    let mut bob = user("bob@corp", &["dba"]);
    bob.subjects = ["https://idp|other".into(), "https://idp|bob".into()].into();
    let e = unchanged_on_err(&mut r, |r| approve(r, &bob, 5));
    assert_eq!(e.code(), "self_review", "{e}");
    assert!(e.to_string().contains("identity-provider account"), "{e}");
    assert_eq!(
        r.revoke(&bob, Timestamp(5)).unwrap_err().code(),
        "self_review"
    );
    let mut carol = user("carol", &["dba"]);
    carol.subjects = ["https://idp|carol".to_string()].into();
    approve(&mut r, &carol, 6).unwrap();
    assert_eq!(r.state, RequestState::Approved);
}

/// Two ids with one identity-provider account (a CLI token pinned to it
/// and a web sign-in, say) are one person: the second approval is refused
/// as a duplicate, and quorum two still waits for someone else.
#[test]
fn one_account_under_two_ids_approves_once() {
    let mut r = request(vec![req_of(&["dba"], 2)]);
    let mut cli = user("amy", &["dba"]);
    cli.subjects = ["https://idp|a1".to_string()].into();
    let mut web = user("amy@corp.com", &["dba"]);
    web.subjects = ["https://idp|a1".to_string()].into();
    approve(&mut r, &cli, 1).unwrap();
    let e = unchanged_on_err(&mut r, |r| approve(r, &web, 2));
    assert_eq!(e.code(), "duplicate_reviewer", "{e}");
    assert_eq!(r.state, RequestState::Pending);
    approve(&mut r, &user("bob", &["dba"]), 3).unwrap();
    assert_eq!(r.state, RequestState::Approved);
}

#[test]
fn separation_of_duties() {
    let mut r = two_groups();
    // the owner, the requester and the on-behalf-of principal, whatever their groups
    for who in [
        user("alice", &["dba", "sec"]),
        user("olivia", &["dba"]),
        Principal {
            id: id("agent:bot"),
            owner: Some(id("user:alice")),
            groups: ["dba".to_string()].into(),
            subjects: Default::default(),
        },
    ] {
        let e = unchanged_on_err(&mut r, |r| approve(r, &who, 5));
        assert_eq!(
            (e.code(), e.http_status()),
            ("self_review", 403),
            "{}",
            who.id
        );
        assert!(r.check_reviewer(&who).is_err());
    }
    // agents and services never review, even in a required group
    for who in [
        Principal {
            id: id("agent:other"),
            owner: Some(id("user:zed")),
            groups: ["dba".to_string()].into(),
            subjects: Default::default(),
        },
        Principal {
            id: id("service:ci"),
            owner: None,
            groups: ["dba".to_string()].into(),
            subjects: Default::default(),
        },
    ] {
        let e = unchanged_on_err(&mut r, |r| approve(r, &who, 5));
        assert_eq!((e.code(), e.http_status()), ("not_eligible", 403));
    }
    // a human outside every required group
    let e = unchanged_on_err(&mut r, |r| approve(r, &user("eve", &["ops"]), 5));
    assert_eq!(e.code(), "not_eligible");
    assert!(e.to_string().contains("dba, sec"), "{e}");
    // a deny from an ineligible person does nothing either
    let e = unchanged_on_err(&mut r, |r| {
        r.review(
            &user("alice", &["dba"]),
            ReviewDecision::Deny,
            None,
            Timestamp(5),
            "g",
        )
    });
    assert_eq!(e.code(), "self_review");
}

#[test]
fn excluded_principals_cannot_review() {
    let mut r = two_groups().with_excluded([id("user:zoe")]);
    assert!(r.sod_set().contains(&id("user:zoe")));
    assert!(r.sod_set().contains(&id("user:alice")));
    assert!(r.sod_set().contains(&id("user:olivia")));
    let e = unchanged_on_err(&mut r, |r| approve(r, &user("zoe", &["dba"]), 1));
    assert_eq!(e.code(), "self_review");
}

/// An `on_behalf_of` the gateway could not back is only declared: the
/// human it names may review (an agent cannot strike a reviewer by naming
/// them), and it is not who the request is done for.
#[test]
fn a_declared_on_behalf_of_changes_nobodys_rights() {
    let mut r = two_groups().with_on_behalf_of_backed(false);
    assert_eq!(r.acting_for(), None);
    assert!(!r.sod_set().contains(&id("user:olivia")));
    approve(&mut r, &user("olivia", &["dba"]), 1).unwrap();
    // Backed, it bars her.
    let r = two_groups();
    assert_eq!(r.acting_for(), Some(&id("user:olivia")));
    // A request stored before backing existed keeps its exclusion.
    let mut old = serde_json::to_value(&r).unwrap();
    old.as_object_mut().unwrap().remove("on_behalf_of_backed");
    let old: Request = serde_json::from_value(old).unwrap();
    assert_eq!(old.acting_for(), Some(&id("user:olivia")));
    let unbacked = serde_json::to_value(two_groups().with_on_behalf_of_backed(false)).unwrap();
    let back: Request = serde_json::from_value(unbacked).unwrap();
    assert_eq!(back.acting_for(), None);
}

#[test]
fn deny_by_one_eligible_reviewer_denies() {
    let mut r = two_groups();
    approve(&mut r, &user("bob", &["dba"]), 1).unwrap();
    let t = r
        .review(
            &user("carol", &["sec"]),
            ReviewDecision::Deny,
            Some("no".into()),
            Timestamp(2),
            "g",
        )
        .unwrap();
    assert_eq!(t.to, RequestState::Denied);
    assert_eq!(
        t.events[1],
        CoreEvent::Denied {
            by: id("user:carol")
        }
    );
    assert!(r.grant.is_none());
    // decided: nothing more
    let e = unchanged_on_err(&mut r, |r| approve(r, &user("dan", &["sec"]), 3));
    assert_eq!((e.code(), e.http_status()), ("already_decided", 409));
}

#[test]
fn review_at_expiry_expires_then_refuses() {
    let mut r = two_groups();
    approve(&mut r, &user("bob", &["dba"]), 1).unwrap();
    let before = r.clone();
    let e = approve(&mut r, &user("carol", &["sec"]), 1000).unwrap_err();
    assert_eq!(e.code(), "expired");
    let t = e.state_changed().unwrap();
    assert_eq!(
        (t.from, t.to),
        (RequestState::Pending, RequestState::Expired)
    );
    assert_eq!(t.events, vec![CoreEvent::Expired]);
    // the expiry is the only change
    let mut expected = before;
    expected.state = RequestState::Expired;
    assert_eq!(r, expected);
    // later calls report expiry without a new transition
    let e = unchanged_on_err(&mut r, |r| approve(r, &user("carol", &["sec"]), 2000));
    assert_eq!(e, ReviewError::Expired { transition: None });
    // one millisecond before the deadline is still in time
    let mut r = two_groups();
    approve(&mut r, &user("bob", &["dba"]), 999).unwrap();
}

#[test]
fn withdraw_rules() {
    let mut r = two_groups();
    let e = unchanged_on_err(&mut r, |r| r.withdraw(&id("user:alice"), Timestamp(1)));
    assert_eq!((e.code(), e.http_status()), ("not_requester", 403));
    let e = unchanged_on_err(&mut r, |r| r.withdraw(&id("agent:bot"), Timestamp(1000)));
    assert_eq!(e.code(), "expired");
    let t = r.withdraw(&id("agent:bot"), Timestamp(1)).unwrap();
    assert_eq!(t.to, RequestState::Withdrawn);
    let e = unchanged_on_err(&mut r, |r| r.withdraw(&id("agent:bot"), Timestamp(2)));
    assert_eq!(e.code(), "already_decided");
    let e = unchanged_on_err(&mut r, |r| approve(r, &user("bob", &["dba"]), 3));
    assert_eq!(e.code(), "already_decided");
}

fn approved() -> Request {
    let mut r = two_groups();
    approve(&mut r, &user("bob", &["dba"]), 10).unwrap();
    approve(&mut r, &user("carol", &["sec"]), 20).unwrap();
    assert_eq!(r.state, RequestState::Approved);
    r
}

#[test]
fn revoke_rules() {
    let mut r = two_groups();
    let e = unchanged_on_err(&mut r, |r| r.revoke(&user("bob", &["dba"]), Timestamp(1)));
    assert_eq!(e.code(), "already_decided"); // pending: nothing to revoke
    let mut r = approved();
    let e = unchanged_on_err(&mut r, |r| {
        r.revoke(&user("alice", &["dba"]), Timestamp(30))
    });
    assert_eq!(e.code(), "self_review");
    let e = unchanged_on_err(&mut r, |r| r.revoke(&user("eve", &["ops"]), Timestamp(30)));
    assert_eq!(e.code(), "not_eligible");
    let svc = Principal {
        id: id("service:ci"),
        owner: None,
        groups: ["dba".to_string()].into(),
        subjects: Default::default(),
    };
    let e = unchanged_on_err(&mut r, |r| r.revoke(&svc, Timestamp(30)));
    assert_eq!(e.code(), "not_eligible");
    // grant expires at 120
    let e = unchanged_on_err(&mut r, |r| r.revoke(&user("dan", &["dba"]), Timestamp(120)));
    assert_eq!(e.code(), "expired");
    let t = r.revoke(&user("dan", &["dba"]), Timestamp(30)).unwrap();
    assert_eq!(t.events, vec![CoreEvent::Revoked { by: id("user:dan") }]);
    let e = unchanged_on_err(&mut r, |r| {
        r.consume(
            "grant-1",
            &r.digest.clone(),
            &id("agent:bot"),
            Timestamp(31),
        )
    });
    assert_eq!(e.code(), "not_approved");
    // after use, revoke says so
    let mut r = approved();
    let d = r.digest.clone();
    r.consume("grant-1", &d, &id("agent:bot"), Timestamp(30))
        .unwrap();
    let e = unchanged_on_err(&mut r, |r| r.revoke(&user("dan", &["dba"]), Timestamp(31)));
    assert_eq!(e.code(), "grant_used");
}

#[test]
fn consume_exactly_once_as_approved() {
    let mut r = approved();
    let d = r.digest.clone();
    let bot = id("agent:bot");
    let other = Digest::of_json(&json!({"x": 1})).unwrap();
    let e = unchanged_on_err(&mut r, |r| {
        r.consume("grant-1", &other, &bot, Timestamp(30))
    });
    assert_eq!((e.code(), e.http_status()), ("digest_mismatch", 409));
    let e = unchanged_on_err(&mut r, |r| {
        r.consume("grant-1", &d, &id("agent:other"), Timestamp(30))
    });
    assert_eq!((e.code(), e.http_status()), ("wrong_requester", 403));
    let e = unchanged_on_err(&mut r, |r| r.consume("grant-2", &d, &bot, Timestamp(30)));
    assert_eq!(e.code(), "unknown_grant");
    let e = unchanged_on_err(&mut r, |r| r.consume("grant-1", &d, &bot, Timestamp(120)));
    assert_eq!(e.code(), "expired");
    let t = r.consume("grant-1", &d, &bot, Timestamp(119)).unwrap();
    assert_eq!(
        (t.from, t.to),
        (RequestState::Approved, RequestState::Executed)
    );
    assert_eq!(
        r.grant.as_ref().and_then(|g| g.used_at),
        Some(Timestamp(119))
    );
    let e = unchanged_on_err(&mut r, |r| r.consume("grant-1", &d, &bot, Timestamp(119)));
    assert_eq!((e.code(), e.http_status()), ("grant_used", 409));
    // executed is never expired by the sweeper
    assert!(r.expire_if_due(Timestamp(10_000)).is_none());
}

#[test]
fn consume_before_approval() {
    let mut r = two_groups();
    let d = r.digest.clone();
    let e = unchanged_on_err(&mut r, |r| {
        r.consume("grant-1", &d, &id("agent:bot"), Timestamp(1))
    });
    assert_eq!(
        e,
        ConsumeError::NotApproved {
            state: RequestState::Pending
        }
    );
}

#[test]
fn outcomes() {
    let mut r = approved();
    let e = unchanged_on_err(&mut r, |r| r.record_outcome(Outcome::Failed, Timestamp(30)));
    assert_eq!(e.code(), "already_decided");
    let d = r.digest.clone();
    r.consume("grant-1", &d, &id("agent:bot"), Timestamp(30))
        .unwrap();
    let t = r.record_outcome(Outcome::Failed, Timestamp(40)).unwrap();
    assert_eq!(
        (t.from, t.to),
        (RequestState::Executed, RequestState::Failed)
    );
    // A second report is refused as one, whichever state the first moved
    // the request to (failed and unknown are states of their own).
    let e = unchanged_on_err(&mut r, |r| {
        r.record_outcome(Outcome::Succeeded, Timestamp(41))
    });
    assert_eq!(e.code(), "outcome_recorded");
    let mut u = approved();
    u.consume("grant-1", &d, &id("agent:bot"), Timestamp(30))
        .unwrap();
    u.record_outcome(Outcome::Unknown, Timestamp(40)).unwrap();
    let e = unchanged_on_err(&mut u, |r| r.record_outcome(Outcome::Failed, Timestamp(41)));
    assert_eq!(e.code(), "outcome_recorded");

    let mut r = approved();
    r.consume("grant-1", &d, &id("agent:bot"), Timestamp(30))
        .unwrap();
    let t = r.record_outcome(Outcome::Succeeded, Timestamp(40)).unwrap();
    assert_eq!(t.to, RequestState::Executed);
    let e = unchanged_on_err(&mut r, |r| {
        r.record_outcome(Outcome::Unknown, Timestamp(41))
    });
    assert_eq!(e.code(), "outcome_recorded");
}

#[test]
fn expiry_and_escalation() {
    let mut r = two_groups();
    assert!(r.expire_if_due(Timestamp(999)).is_none());
    assert!(!r.escalation_due(Timestamp(499), 0.5));
    assert!(r.escalation_due(Timestamp(500), 0.5));
    assert!(!r.escalation_due(Timestamp(500), f64::NAN));
    assert!(r.mark_escalated());
    assert!(!r.mark_escalated());
    assert!(!r.escalation_due(Timestamp(600), 0.5));
    let t = r.expire_if_due(Timestamp(1000)).unwrap();
    assert_eq!(
        (t.from, t.to),
        (RequestState::Pending, RequestState::Expired)
    );
    assert!(r.expire_if_due(Timestamp(2000)).is_none());
    assert!(!r.escalation_due(Timestamp(2000), 0.5));

    // an approved request whose grant goes unused expires with the grant
    let mut r = approved();
    assert!(r.expire_if_due(Timestamp(119)).is_none());
    let t = r.expire_if_due(Timestamp(120)).unwrap();
    assert_eq!(
        (t.from, t.to),
        (RequestState::Approved, RequestState::Expired)
    );
    let d = r.digest.clone();
    let e = unchanged_on_err(&mut r, |r| {
        r.consume("grant-1", &d, &id("agent:bot"), Timestamp(50))
    });
    assert_eq!(e.code(), "expired");
}

#[test]
fn no_requirements_never_approves() {
    let mut r = request(vec![]);
    let e = unchanged_on_err(&mut r, |r| approve(r, &user("bob", &["dba"]), 1));
    assert_eq!(e.code(), "not_eligible");
    assert!(r.assignment().is_none());
}

#[test]
fn serde_round_trip() {
    let r = approved();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["state"], json!("approved"));
    assert_eq!(v["requester"]["owner"], json!("user:alice"));
    let back: Request = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
    assert!(RequestState::Executed.is_terminal());
    assert!(!RequestState::Approved.is_terminal());
    for s in [
        "pending",
        "approved",
        "denied",
        "expired",
        "withdrawn",
        "revoked",
        "executed",
        "failed",
        "unknown",
    ] {
        let st: RequestState = serde_json::from_value(json!(s)).unwrap();
        assert_eq!(st.as_str(), s);
    }
}

#[test]
fn escalation_widens_who_may_review_once_due() {
    let mut r = two_groups();
    let leads: BTreeSet<String> = ["leads".to_string()].into();
    let lena = user("lena", &["leads"]);
    // before escalation a lead is not eligible
    let e = unchanged_on_err(&mut r, |r| approve(r, &lena, 10));
    assert_eq!(e.code(), "not_eligible");
    // not yet due at 499 ms of a 1000 ms TTL with fraction 0.5
    let e = unchanged_on_err(&mut r, |r| r.escalate(&leads, 0.5, Timestamp(499)));
    assert_eq!(e.code(), "not_due");
    let e = unchanged_on_err(&mut r, |r| {
        r.escalate(&BTreeSet::new(), 0.5, Timestamp(600))
    });
    assert_eq!(e.code(), "nothing_to_escalate");
    let t = r.escalate(&leads, 0.5, Timestamp(500)).unwrap();
    assert_eq!(
        (t.from, t.to),
        (RequestState::Pending, RequestState::Pending)
    );
    assert_eq!(
        t.events,
        vec![CoreEvent::Escalated {
            groups: vec!["leads".into()]
        }]
    );
    assert!(r.escalated);
    assert_eq!(r.escalated_to, leads);
    let lead: BTreeSet<String> = ["leads".to_string()].into();
    assert!(r.requirements.iter().all(|q| q.admits(&lead)));
    assert!(r.requirements.iter().all(|q| q.groups != ["leads"]));
    assert_eq!(r.requirements[1].label(), "sec review (escalated to leads)");
    assert!(r.requirements.iter().all(|q| q.quorum == 1));
    // twice is refused and changes nothing
    let e = unchanged_on_err(&mut r, |r| r.escalate(&leads, 0.5, Timestamp(600)));
    assert_eq!(e.code(), "nothing_to_escalate");
    // now a lead may fill one slot, but quorum still needs distinct humans:
    // one lead cannot satisfy both requirements
    let t = approve(&mut r, &lena, 600).unwrap();
    assert_eq!(t.to, RequestState::Pending);
    let t = approve(&mut r, &user("bob", &["dba"]), 610).unwrap();
    assert_eq!(t.to, RequestState::Approved);
    // separation of duties still holds for escalation members
    let mut r = two_groups();
    r.escalate(&leads, 0.5, Timestamp(500)).unwrap();
    let alice = user("alice", &["leads"]);
    let e = unchanged_on_err(&mut r, |r| approve(r, &alice, 600));
    assert_eq!(e.code(), "self_review");
    // only pending, only before expiry
    let e = unchanged_on_err(&mut r, |r| {
        r.escalate(&["others".to_string()].into(), 0.5, Timestamp(1000))
    });
    assert_eq!(e.code(), "expired");
    let mut r = approved();
    let e = unchanged_on_err(&mut r, |r| r.escalate(&leads, 0.5, Timestamp(60)));
    assert_eq!(e.code(), "already_decided");
    // a request without requirements has nothing to escalate
    let mut r = request(vec![]);
    let e = unchanged_on_err(&mut r, |r| r.escalate(&leads, 0.0, Timestamp(1)));
    assert_eq!(e.code(), "nothing_to_escalate");
}

/// A request needing one data owner and one security reviewer.
fn owner_and_security() -> Request {
    request(vec![req_of(&["data-owners"], 1), req_of(&["security"], 1)])
}

#[test]
fn escalation_alone_never_approves() {
    // Two data owners approve; the security slot is still empty, so the
    // request waits. Escalating to data owners widens the security slot, but
    // nobody decided in the place of the security reviewer: still pending.
    let mut r = owner_and_security();
    let dan = user("dan", &["data-owners"]);
    let dora = user("dora", &["data-owners"]);
    approve(&mut r, &dan, 10).unwrap();
    let t = approve(&mut r, &dora, 20).unwrap();
    assert_eq!(t.to, RequestState::Pending);
    let owners: BTreeSet<String> = ["data-owners".to_string()].into();
    let t = r.escalate(&owners, 0.5, Timestamp(500)).unwrap();
    assert_eq!(
        (t.from, t.to),
        (RequestState::Pending, RequestState::Pending)
    );
    assert_eq!(
        t.events,
        vec![CoreEvent::Escalated {
            groups: vec!["data-owners".into()]
        }]
    );
    assert!(r.grant.is_none() && r.decided_at.is_none());
    assert!(r.assignment().is_none());
    assert_eq!(
        r.requirements[1].widened,
        vec![Widening {
            group: "data-owners".into(),
            from_review: 2
        }]
    );
    // Neither earlier approver may review again to fill the widened slot.
    let e = unchanged_on_err(&mut r, |r| approve(r, &dora, 600));
    assert_eq!(e.code(), "duplicate_reviewer");
    // A data owner reviewing after the escalation approves it, recorded as
    // filling the escalated security slot.
    let dina = user("dina", &["data-owners"]);
    let t = approve(&mut r, &dina, 600).unwrap();
    assert_eq!(t.to, RequestState::Approved);
    let Some(CoreEvent::Approved {
        seats, approvers, ..
    }) = t.events.last()
    else {
        panic!("no approval: {:?}", t.events);
    };
    assert_eq!(
        approvers,
        &vec![dan.id.clone(), dora.id.clone(), dina.id.clone()]
    );
    assert_eq!(seats.len(), 2);
    assert!(!seats[0].widened && seats[0].requirement == "review-data-owners");
    assert_eq!(
        seats[1],
        Seat {
            requirement: "review-security".into(),
            approver: dina.id.clone(),
            group: "data-owners".into(),
            widened: true,
        }
    );
    assert_eq!(r.decided_at, Some(Timestamp(600)));
    assert_eq!(r.grant.as_ref().map(|g| g.id.as_str()), Some("grant-1"));
}

#[test]
fn escalation_with_quorum_two_fills_widened_slots_only_after_it() {
    // sec needs two; one sec member approved before the escalation to dba.
    // A member of both groups reviewing after it counts through sec, the
    // policy's own group, not through the widening.
    let mut r = request(vec![req_of(&["sec"], 2)]);
    let carol = user("carol", &["sec"]);
    let gil = user("gil", &["dba", "sec"]);
    approve(&mut r, &carol, 10).unwrap();
    let dba: BTreeSet<String> = ["dba".to_string()].into();
    r.escalate(&dba, 0.5, Timestamp(500)).unwrap();
    // gil is in sec too: he counts through sec, not the widening
    let t = approve(&mut r, &gil, 510).unwrap();
    assert_eq!(t.to, RequestState::Approved);
    let Some(CoreEvent::Approved { seats, .. }) = t.events.last() else {
        panic!("no approval");
    };
    assert!(seats.iter().all(|s| !s.widened && s.group == "sec"));

    // Same, with the second sec slot filled through dba after the
    // escalation, and a dba member's earlier review not counting.
    let mut r = request(vec![req_of(&["sec"], 2), req_of(&["dba"], 1)]);
    let dan = user("dan", &["dba"]);
    approve(&mut r, &carol, 10).unwrap();
    approve(&mut r, &dan, 20).unwrap();
    approve(&mut r, &user("dora", &["dba"]), 30).unwrap();
    // two dba members and one sec member, before: sec's second slot is open
    assert_eq!(r.state, RequestState::Pending);
    let t = r.escalate(&dba, 0.5, Timestamp(500)).unwrap();
    assert_eq!(t.to, RequestState::Pending);
    let t = approve(&mut r, &user("dina", &["dba"]), 600).unwrap();
    assert_eq!(t.to, RequestState::Approved);
    let Some(CoreEvent::Approved { seats, .. }) = t.events.last() else {
        panic!("no approval");
    };
    let widened: Vec<&Seat> = seats.iter().filter(|s| s.widened).collect();
    assert_eq!(widened.len(), 1);
    assert_eq!(widened[0].approver, id("user:dina"));
    assert_eq!(widened[0].requirement, "review-sec");
}

#[test]
fn requirements_stored_before_widening_existed_read_back() {
    let v = json!({"policy_id": "p", "groups": ["dba"], "quorum": 1});
    let r: Requirement = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(r, Requirement::new("p", vec!["dba".into()], 1));
    assert_eq!(serde_json::to_value(&r).unwrap(), v);
    assert_eq!(r.label(), "dba review");
}

#[test]
fn escalation_counts_each_human_once_and_only_recorded_groups() {
    // One dba approval, escalated to dba: one human still fills one slot.
    let mut r = two_groups();
    approve(&mut r, &user("dan", &["dba"]), 10).unwrap();
    let dba: BTreeSet<String> = ["dba".to_string()].into();
    let t = r.escalate(&dba, 0.5, Timestamp(500)).unwrap();
    assert_eq!(t.to, RequestState::Pending);
    assert_eq!(t.events.len(), 1);
    assert!(r.grant.is_none() && r.decided_at.is_none());
    // A reviewer counts with the groups recorded at review time, those the
    // request required then: gil's membership of leads was not one of them,
    // so escalating to leads does not seat him in the sec slot afterwards.
    let mut r = two_groups();
    let gil = user("gil", &["dba", "leads"]);
    approve(&mut r, &gil, 10).unwrap();
    approve(&mut r, &user("dan", &["dba"]), 20).unwrap();
    assert_eq!(r.reviews[0].groups, ["dba".to_string()].into());
    let leads: BTreeSet<String> = ["leads".to_string()].into();
    let t = r.escalate(&leads, 0.5, Timestamp(500)).unwrap();
    assert_eq!(t.to, RequestState::Pending);
    // A lead reviewing after the escalation completes it the usual way.
    let t = approve(&mut r, &user("lena", &["leads"]), 600).unwrap();
    assert_eq!(t.to, RequestState::Approved);
}
