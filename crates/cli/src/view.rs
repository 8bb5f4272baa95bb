//! A customer's golden record as text for people. The record itself is the API's
//! `RecordView`, so `record --json` prints the very shape the HTTP API returns.

use std::io::{self, Write};

use idledger_api::views::RecordView;
use idledger_domain::state::ConsentStatus;

use crate::render::{self, NONE, kv, opt, time};

/// The record as aligned text.
pub fn write_text(view: &RecordView, w: &mut dyn Write) -> io::Result<()> {
    match view.as_of {
        Some(at) => writeln!(w, "customer {} as of {}", view.customer_id, time(at))?,
        None => writeln!(w, "customer {}", view.customer_id)?,
    }
    kv(w, 2, "registered at", opt(view.registered_at.map(time)))?;
    kv(w, 2, "stream version", view.stream_version)?;
    if let Some(link) = &view.merged_into {
        kv(
            w,
            2,
            "merged into",
            format!("{} since {}", link.customer_id, time(link.merged_at)),
        )?;
    }
    for link in &view.absorbed {
        kv(
            w,
            2,
            "merged into it",
            format!("{} since {}", link.customer_id, time(link.merged_at)),
        )?;
    }
    writeln!(w, "fields")?;
    if view.fields.is_empty() {
        writeln!(w, "  (none)")?;
    }
    for f in &view.fields {
        writeln!(w, "  {}", f.field)?;
        kv(w, 4, "value", opt(f.value.as_ref().map(json_text)))?;
        kv(w, 4, "version", f.version)?;
        kv(w, 4, "source", opt(f.source.as_ref()))?;
        kv(w, 4, "recorded at", opt(f.recorded_at.map(time)))?;
        if let Some(at) = f.asserted_at {
            kv(w, 4, "observed at", time(at))?;
        }
        let verification = f.verification.as_ref().map(|v| {
            let evidence = v
                .evidence
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            format!(
                "verified {} by {}{evidence}",
                time(v.verified_at),
                v.verified_by
            )
        });
        kv(w, 4, "verification", opt(verification))?;
        let pending = f.pending.as_ref().map(|p| {
            let state = if p.live { "expires" } else { "expired" };
            format!(
                "{} requested by {} at {} (challenge {}, {state} {})",
                json_text(&p.value),
                p.requested_by,
                time(p.requested_at),
                p.challenge_id,
                time(p.expires_at)
            )
        });
        kv(w, 4, "pending change", opt(pending))?;
    }
    writeln!(w, "consents (status at {})", time(view.evaluated_at))?;
    if view.consents.is_empty() {
        writeln!(w, "  (none)")?;
    }
    for c in &view.consents {
        writeln!(w, "  {}", c.purpose)?;
        kv(w, 4, "status", status(c.status))?;
        kv(w, 4, "terms", render::terms(&c.terms))?;
        kv(
            w,
            4,
            "granted at",
            format!("{} by {}", time(c.granted_at), c.granted_by),
        )?;
        kv(w, 4, "on behalf of", opt(c.on_behalf_of.as_ref()))?;
        kv(w, 4, "withdrawn at", opt(c.withdrawn_at.map(time)))?;
        kv(w, 4, "version", c.version)?;
    }
    writeln!(w, "open proposals")?;
    if view.proposals.is_empty() {
        writeln!(w, "  (none)")?;
    }
    for p in &view.proposals {
        writeln!(w, "  {}", p.proposal_id)?;
        kv(w, 4, "field", &p.field)?;
        kv(w, 4, "value", json_text(&p.value))?;
        kv(
            w,
            4,
            "proposed by",
            format!("{} at {}", p.proposed_by, time(p.proposed_at)),
        )?;
    }
    Ok(())
}

/// A consent status in words.
pub fn status(s: ConsentStatus) -> &'static str {
    match s {
        ConsentStatus::Granted => "granted",
        ConsentStatus::Withdrawn => "withdrawn",
        ConsentStatus::Expired => "expired (past the grant's own expiry)",
        ConsentStatus::Stale => "stale (older than the policy allows)",
        ConsentStatus::GuardianRequired => {
            "not valid: the subject is a minor and no guardian gave it"
        }
        ConsentStatus::NeverGranted => "never granted",
    }
}

/// A value in its natural JSON form as text: strings bare, null as "-", the rest as JSON.
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => NONE.to_owned(),
        other => other.to_string(),
    }
}
