//! The audit page's readable parts: an inclusion receipt rendered as the
//! proof it is (the entry, its leaf hash, the checkpoint it is included
//! in with its size and signature status, the path of hashes to the
//! root), and the paged list of entries, newest first.
//!
//! What is shown as verified is verified here, with the gateway's own
//! verifier key; the raw receipt (JSON) stays the thing to keep and check
//! offline (`secondkey log verify --receipt`).

use std::fmt::Write;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secondkey_core::time::Timestamp;
use secondkey_log::checkpoint::Checkpoint;
use secondkey_log::entry::Entry;
use secondkey_log::note::Verifier;
use secondkey_log::receipt::Receipt;

use super::highlight::{self, esc};
use super::pages::when;

/// Entries per page of the audit list.
pub const PAGE: u64 = 50;

fn time_of(t: &str) -> String {
    match secondkey_audit::time::millis(t) {
        Some(ms) => when(Timestamp(ms)),
        None => esc(t),
    }
}

/// Links to what an entry's subjects name (a request's page), else the id.
fn subjects(e: &Entry) -> String {
    if e.subjects.is_empty() {
        return "<span class=\"muted\">—</span>".into();
    }
    e.subjects
        .iter()
        .map(|(k, v)| {
            if k == "request" {
                let href: String = form_urlencoded::byte_serialize(v.as_bytes()).collect();
                format!("{}: <a href=\"/requests/{href}\">{}</a>", esc(k), esc(v))
            } else {
                format!("{}: <code>{}</code>", esc(k), esc(v))
            }
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

/// `receipt` as a readable proof, each step checked with `verifier` (the
/// gateway's log key).
pub fn readable(receipt: &Receipt, verifier: &Verifier) -> String {
    let i = receipt.index;
    let mut b = String::new();
    // The overall verdict first: it is the one thing a reader needs.
    match receipt.verify(verifier) {
        Ok(_) => {
            let _ = write!(
                b,
                "<p class=\"notice\" id=\"receipt-verdict\">Verified: entry {i} is included in the log of {} entries whose checkpoint is signed by <code>{}</code>.</p>",
                receipt.tree_size,
                esc(verifier.name())
            );
        }
        Err(e) => {
            let _ = write!(
                b,
                "<p class=\"error\" id=\"receipt-verdict\">Does not verify: {}.</p>",
                esc(&e.to_string())
            );
        }
    }
    let _ = write!(
        b,
        "<p><a href=\"/audit/receipt/{i}\" download=\"receipt-{i}.json\" id=\"receipt-download\">Download receipt-{i}.json</a> · \
         check it offline with <code>secondkey log verify --receipt receipt-{i}.json --key …</code></p>"
    );
    b.push_str("<table class=\"facts\" id=\"receipt\">");
    let row = |b: &mut String, label: &str, v: &str| {
        let _ = write!(b, "<tr><th>{label}</th><td>{v}</td></tr>");
    };
    row(&mut b, "Entry index", &i.to_string());
    match Entry::from_bytes(receipt.entry.as_bytes()) {
        Ok(e) => {
            row(&mut b, "Event", &format!("<code>{}</code>", esc(&e.event)));
            row(&mut b, "When", &time_of(&e.time));
            row(
                &mut b,
                "By",
                &e.actor
                    .as_deref()
                    .map(|a| format!("<code>{}</code>", esc(a)))
                    .unwrap_or_else(|| "<span class=\"muted\">the gateway</span>".into()),
            );
            row(&mut b, "Concerns", &subjects(&e));
            if let Some(d) = &e.digest {
                row(&mut b, "Action digest", &format!("<code>{}</code>", esc(d)));
            }
        }
        Err(e) => row(
            &mut b,
            "Entry",
            &format!(
                "<span class=\"error\">does not decode: {}</span>",
                esc(&e.to_string())
            ),
        ),
    }
    row(
        &mut b,
        "Leaf hash",
        &format!(
            "<code id=\"leaf-hash\">{}</code> <small class=\"muted\">SHA-256(0x00 ‖ entry)</small>",
            esc(&receipt.leaf_hash)
        ),
    );
    match Checkpoint::parse_note_unverified(&receipt.checkpoint) {
        Ok(cp) => {
            row(
                &mut b,
                "Checkpoint",
                &format!("<code>{}</code>", esc(&cp.origin)),
            );
            row(
                &mut b,
                "Tree size",
                &format!("<span id=\"tree-size\">{}</span>", cp.size),
            );
            row(
                &mut b,
                "Root hash",
                &format!("<code>{}</code>", hex::encode(cp.root)),
            );
            let sig = match Checkpoint::open(&receipt.checkpoint, verifier) {
                Ok(_) => format!(
                    "<span class=\"good\" id=\"signature\">valid</span>, by <code>{}</code> (key id {:08x})",
                    esc(verifier.name()),
                    verifier.key_id()
                ),
                Err(e) => format!(
                    "<span class=\"error\" id=\"signature\">not valid</span> for this gateway's key: {}",
                    esc(&e.to_string())
                ),
            };
            row(&mut b, "Signature", &sig);
        }
        Err(e) => row(
            &mut b,
            "Checkpoint",
            &format!(
                "<span class=\"error\">does not parse: {}</span>",
                esc(&e.to_string())
            ),
        ),
    }
    b.push_str("</table>");
    let _ = write!(
        b,
        "<h3>Path of hashes <small class=\"muted\">leaf to root, {} step{}</small></h3>",
        receipt.proof.len(),
        if receipt.proof.len() == 1 { "" } else { "s" }
    );
    if receipt.proof.is_empty() {
        b.push_str("<p class=\"muted\" id=\"proof\">None: the entry is the whole tree, its leaf hash is the root.</p>");
    } else {
        b.push_str("<ol class=\"proof\" id=\"proof\">");
        for h in &receipt.proof {
            let text = match STANDARD.decode(h) {
                Ok(raw) => hex::encode(raw),
                Err(_) => format!("(not base64) {h}"),
            };
            let _ = write!(b, "<li><code>{}</code></li>", esc(&text));
        }
        b.push_str("</ol>");
    }
    let pretty = serde_json::from_str::<serde_json::Value>(&receipt.entry)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| receipt.entry.clone());
    let _ = write!(
        b,
        "<details><summary>The entry exactly as logged</summary><pre class=\"code json\">{}</pre></details>",
        highlight::json(&pretty)
    );
    b
}

/// One page of the log's entries, newest first: `entries` are
/// `(index, bytes)` in log order, ending just before `before`; `size` is
/// the log's size.
pub fn entry_list(entries: &[(u64, Vec<u8>)], size: u64, before: u64) -> String {
    let mut b = format!(
        "<h2>Entries <small class=\"muted\">{} in the log, newest first</small></h2>",
        size
    );
    if entries.is_empty() {
        b.push_str("<p class=\"empty\">No entries here.</p>");
        return b;
    }
    b.push_str("<table id=\"entries\"><thead><tr><th>#</th><th>When</th><th>Event</th><th>By</th><th>Concerns</th><th>Receipt</th></tr></thead><tbody>");
    for (i, bytes) in entries.iter().rev() {
        match Entry::from_bytes(bytes) {
            Ok(e) => {
                let _ = write!(
                    b,
                    "<tr><td><a href=\"/audit?index={i}\">{i}</a></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td>\
                     <td><a href=\"/audit?index={i}\">proof</a> · <a href=\"/audit/receipt/{i}\" download=\"receipt-{i}.json\">JSON</a></td></tr>",
                    time_of(&e.time),
                    esc(&e.event),
                    e.actor.as_deref().map(esc).unwrap_or_else(|| "<span class=\"muted\">gateway</span>".into()),
                    subjects(&e),
                );
            }
            Err(err) => {
                let _ = write!(
                    b,
                    "<tr><td>{i}</td><td colspan=\"5\" class=\"error\">does not decode: {}</td></tr>",
                    esc(&err.to_string())
                );
            }
        }
    }
    b.push_str("</tbody></table><p class=\"pager\">");
    let first = entries.first().map(|(i, _)| *i).unwrap_or(0);
    if before < size {
        let newer = (before + PAGE).min(size);
        let _ = write!(
            b,
            "<a href=\"/audit?before={newer}\" rel=\"prev\">← newer</a> "
        );
    }
    if first > 0 {
        let _ = write!(
            b,
            "<a href=\"/audit?before={first}\" rel=\"next\">older →</a>"
        );
    }
    b.push_str("</p>");
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use secondkey_log::merkle::{leaf_hash, Tree};
    use secondkey_log::note::Signer;

    fn log(n: u64) -> (Tree, Vec<Vec<u8>>, Signer, String) {
        let signer = Signer::generate("test.example/log").unwrap();
        let mut tree = Tree::default();
        let mut bytes = vec![];
        for i in 0..n {
            let e = Entry {
                index: i,
                time: "2026-12-02T10:00:00.000Z".into(),
                event: if i == 1 {
                    "review.submitted".into()
                } else {
                    "request.created".into()
                },
                actor: Some("user:<bob>".into()),
                subjects: [("request".to_string(), format!("req_{i}&x"))]
                    .into_iter()
                    .collect(),
                digest: None,
                payload: serde_json::json!({"comment": "</pre><script>x</script>"}),
            };
            let b = e.to_bytes().unwrap();
            tree.push(leaf_hash(&b));
            bytes.push(b);
        }
        let note = Checkpoint::new("test.example/log", n, tree.root())
            .sign(&signer)
            .unwrap();
        (tree, bytes, signer, note)
    }

    #[test]
    fn a_receipt_reads_as_a_proof_and_is_verified() {
        let (tree, bytes, signer, note) = log(5);
        let r = Receipt::build(&tree, &bytes[1], 1, &note).unwrap();
        let html = readable(&r, &signer.verifier());
        assert!(
            html.contains("Verified: entry 1 is included in the log of 5 entries"),
            "{html}"
        );
        assert!(html.contains("id=\"signature\">valid</span>"), "{html}");
        assert!(html.contains(&r.leaf_hash), "{html}");
        assert_eq!(html.matches("<li><code>").count(), r.proof.len());
        assert_eq!(r.proof.len(), 3);
        for h in &r.proof {
            let hex = hex::encode(STANDARD.decode(h).unwrap());
            assert!(html.contains(&hex), "{hex} in {html}");
        }
        assert!(html.contains("href=\"/requests/req_1%26x\""), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("href=\"/audit/receipt/1\""), "{html}");
    }

    #[test]
    fn a_receipt_with_another_key_or_a_changed_entry_says_it_does_not_verify() {
        let (tree, bytes, signer, note) = log(3);
        let other = Signer::generate("test.example/log").unwrap().verifier();
        let r = Receipt::build(&tree, &bytes[2], 2, &note).unwrap();
        let html = readable(&r, &other);
        assert!(
            html.contains("class=\"error\" id=\"receipt-verdict\">Does not verify"),
            "{html}"
        );
        assert!(html.contains("id=\"signature\">not valid</span>"), "{html}");
        // The right key, but an entry edited after the fact.
        let mut changed = r.clone();
        changed.entry = changed.entry.replace("request.created", "request.approved");
        let html = readable(&changed, &signer.verifier());
        assert!(
            html.contains("id=\"receipt-verdict\">Does not verify"),
            "{html}"
        );
        assert!(html.contains("id=\"signature\">valid</span>"), "{html}");
    }

    #[test]
    fn the_entry_list_is_newest_first_and_pages_both_ways() {
        let (_, bytes, _, _) = log(5);
        let page: Vec<(u64, Vec<u8>)> = (2u64..4).zip(bytes[2..4].iter().cloned()).collect();
        let html = entry_list(&page, 5, 4);
        let at3 = html.find("?index=3\"").unwrap();
        let at2 = html.find("?index=2\"").unwrap();
        assert!(at3 < at2, "newest first: {html}");
        assert!(
            html.contains("href=\"/audit?before=5\" rel=\"prev\""),
            "{html}"
        );
        assert!(
            html.contains("href=\"/audit?before=2\" rel=\"next\""),
            "{html}"
        );
        assert!(html.contains("&lt;bob&gt;"), "{html}");
        let last: Vec<(u64, Vec<u8>)> = vec![(0, bytes[0].clone())];
        let html = entry_list(&last, 5, 1);
        assert!(!html.contains("rel=\"next\""), "{html}");
        assert!(entry_list(&[], 0, 0).contains("No entries here."));
    }
}
