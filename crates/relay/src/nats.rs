//! NATS JetStream: the delivery stream, publishing with pipelined PubAcks, and ack intake.
//!
//! Ordering under failure: async-nats drops whatever sat in its write buffer when the
//! connection breaks and sends later publishes on the new connection, so a naive pipeline can
//! store message n+1 while n is lost. We therefore keep at most one unacknowledged message per
//! customer in flight (many customers are in flight at once): a customer's next message is
//! published only after the previous one is stored. After any failure the step stops, commits
//! the acknowledged prefix and starts again from it; re-published messages carry the same
//! `Nats-Msg-Id`, which JetStream drops within its duplicate window.
//!
//! Erasure: at a customer's `customer_erased` event each consumer's task removes every message
//! of that customer from the stream (every consumer's, but the erasure notices) before its
//! checkpoint may pass the event, so the stream keeps no copy of an erased customer's data.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use idledger_domain::ids::CustomerId;
use idledger_store::delivery::{AckOutcome, Consumer, ConsumerId};
use idledger_store::{Deliveries, Ledger};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::acks;
use crate::config::{Backoff, NatsAuth, NatsConfig, Retention, StreamSettings};
use crate::envelope;
use crate::error::RelayError;
use crate::plan::{Batch, Erased};
use crate::worker::Sent;

/// Connects (in the background: the relay starts even while NATS is down) and builds the
/// JetStream context whose timeout bounds every publish's wait for its PubAck.
pub async fn connect(config: &NatsConfig) -> Result<jetstream::Context, RelayError> {
    let client = connect_options(config)?
        .name("idledger-relay")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5)))
        })
        .event_callback(|event| async move {
            // Refused credentials and permission violations are configuration faults the
            // operator must see; the rest (disconnects, reconnects) is routine.
            match event {
                async_nats::Event::ServerError(e) => {
                    tracing::warn!(error = %e, "NATS server refused the relay");
                }
                async_nats::Event::ClientError(e) => {
                    tracing::warn!(error = %e, "NATS client error");
                }
                other => tracing::debug!(event = %other, "NATS connection"),
            }
        })
        .connect(config.url.as_str())
        .await
        .map_err(|e| {
            let url = idledger_store::redact_url(&config.url);
            RelayError::Config(format!("NATS URL {url}: {e}"))
        })?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(config.publish_timeout)
        .build(client))
}

/// The connection options `config` asks for: credentials (configured, or in the URL, which
/// async-nats itself ignores) and TLS. Checks them without connecting, so `serve` can refuse
/// an unusable configuration at start.
pub fn connect_options(config: &NatsConfig) -> Result<async_nats::ConnectOptions, RelayError> {
    let bad = |what: String| RelayError::Config(format!("NATS: {what}"));
    let options = async_nats::ConnectOptions::new();
    let auth = match (&config.auth, url_credentials(&config.url)?) {
        (NatsAuth::None, from_url) => from_url.unwrap_or_default(),
        (configured, None) => configured.clone(),
        (_, Some(_)) => {
            return Err(bad(
                "credentials are both in the URL and configured; keep one".to_owned(),
            ));
        }
    };
    let options = match auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user, password.to_string())
        }
        NatsAuth::Token(token) => options.token(token.to_string()),
        NatsAuth::NKey(seed) => {
            // Checked here: async-nats would only fail at the first connection.
            nkeys::KeyPair::from_seed(seed.trim())
                .map_err(|_| bad("the nkey seed is not a valid user seed".to_owned()))?;
            options.nkey(seed.trim().to_owned())
        }
        NatsAuth::Credentials(creds) => options
            .credentials(&creds)
            .map_err(|e| bad(format!("the credentials file is not valid: {e}")))?,
    };
    let mut options = options.require_tls(config.tls.required);
    if let Some(ca) = &config.tls.ca_file {
        readable(ca).map_err(&bad)?;
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls.client_cert {
        readable(cert).map_err(&bad)?;
        readable(key).map_err(&bad)?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

fn readable(path: &std::path::Path) -> Result<(), String> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The credentials a NATS URL (or comma-separated list) carries: `user:password@` or
/// `token@`. Every URL of a list must carry the same, or none.
fn url_credentials(urls: &str) -> Result<Option<NatsAuth>, RelayError> {
    let mut found: Option<(String, Option<String>)> = None;
    for raw in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let Ok(url) = url::Url::parse(raw) else {
            continue; // async-nats names the malformed URL when it connects.
        };
        if url.username().is_empty() {
            continue;
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let this = (decode(url.username()), url.password().map(decode));
        match &found {
            Some(seen) if *seen != this => {
                return Err(RelayError::Config(
                    "NATS: the URLs carry different credentials".to_owned(),
                ));
            }
            _ => found = Some(this),
        }
    }
    Ok(found.map(|(user, password)| match password {
        Some(password) => NatsAuth::UserPassword {
            user,
            password: Zeroizing::new(password),
        },
        None => NatsAuth::Token(Zeroizing::new(user)),
    }))
}

fn stream_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: settings.name.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        retention: match settings.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        max_age: settings.max_age.unwrap_or_default(),
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        storage: if settings.file_storage {
            stream::StorageType::File
        } else {
            stream::StorageType::Memory
        },
        description: Some(
            "idledger deliveries: CloudEvents per consumer, customer and field".to_owned(),
        ),
        ..Default::default()
    }
}

/// Creates the delivery stream if missing, or updates it where its settings differ from ours.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<(), RelayError> {
    ensure(js, stream_config(settings)).await
}

async fn ensure(js: &jetstream::Context, wanted: stream::Config) -> Result<(), RelayError> {
    match js.get_stream(&wanted.name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(RelayError::nats)?;
            let have = &info.config;
            let differs = have.subjects != wanted.subjects
                || have.retention != wanted.retention
                || have.max_age != wanted.max_age
                || have.num_replicas != wanted.num_replicas
                || have.duplicate_window != wanted.duplicate_window;
            if differs {
                tracing::info!(stream = %wanted.name, "updating the JetStream stream's settings");
                let updated = stream::Config {
                    // Storage cannot change on a live stream; keep what it has.
                    storage: have.storage,
                    ..wanted
                };
                js.update_stream(updated).await.map_err(RelayError::nats)?;
            }
            Ok(())
        }
        Err(e) if is_not_found(&e) => {
            tracing::info!(stream = %wanted.name, "creating the JetStream stream");
            js.create_stream(wanted).await.map_err(RelayError::nats)?;
            Ok(())
        }
        Err(e) => Err(RelayError::nats(e)),
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The name of the durable pull consumer idledger keeps for `consumer` on the delivery
/// stream: the consumer's id.
pub fn durable_name(consumer: &ConsumerId) -> &str {
    consumer.as_str()
}

/// Keeps a durable pull consumer for `consumer` on the delivery stream, filtered to its
/// subjects (`<prefix>.<consumer>.>`). A consumer that NATS permissions confine (see
/// `server_config`) reads from it, since it may not create consumers on the stream itself.
/// Created if missing; an existing one is left as it is (its position is the consumer's).
pub async fn ensure_durable(
    js: &jetstream::Context,
    settings: &StreamSettings,
    consumer: &ConsumerId,
) -> Result<(), RelayError> {
    let stream = js
        .get_stream(&settings.name)
        .await
        .map_err(RelayError::nats)?;
    let name = durable_name(consumer);
    stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: format!("{}.{}.>", settings.subject_prefix, consumer),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                description: Some(format!("idledger: deliveries to {consumer}")),
                ..Default::default()
            },
        )
        .await
        .map_err(RelayError::nats)?;
    Ok(())
}

/// Publishes one consumer's messages to the delivery stream.
#[derive(Debug)]
pub struct NatsSender {
    js: jetstream::Context,
    settings: StreamSettings,
    max_in_flight: usize,
    /// How long one answer of NATS may take (the publish timeout).
    request_timeout: Duration,
    /// Whether the consumer's durable exists (checked once per task).
    durable_ready: bool,
}

impl NatsSender {
    pub fn new(js: jetstream::Context, config: &NatsConfig) -> Self {
        Self {
            js,
            settings: config.stream.clone(),
            max_in_flight: config.max_in_flight.max(1),
            request_timeout: config.publish_timeout,
            durable_ready: false,
        }
    }

    /// Publishes the batch with up to `max_in_flight` PubAcks pending, one per customer at a
    /// time (see the module docs). Stops scheduling at the first failure or on cancellation,
    /// waits for what is in flight, and reports which messages were stored.
    pub async fn send(
        &mut self,
        consumer: &Consumer,
        batch: &Batch,
        cancel: &CancellationToken,
    ) -> Sent {
        let messages = &batch.messages;
        let mut queues: HashMap<CustomerId, VecDeque<usize>> = HashMap::new();
        let mut ready: VecDeque<CustomerId> = VecDeque::new();
        for (i, planned) in messages.iter().enumerate() {
            let customer = planned.message.customer_id;
            queues
                .entry(customer)
                .or_insert_with(|| {
                    ready.push_back(customer);
                    VecDeque::new()
                })
                .push_back(i);
        }
        let mut stored = vec![false; messages.len()];
        let mut error: Option<RelayError> = None;
        if !self.durable_ready {
            match ensure_durable(&self.js, &self.settings, &consumer.id).await {
                Ok(()) => self.durable_ready = true,
                Err(e) => error = Some(e),
            }
        }
        let mut in_flight = FuturesUnordered::new();
        loop {
            while error.is_none() && !cancel.is_cancelled() && in_flight.len() < self.max_in_flight
            {
                let Some(customer) = ready.pop_front() else {
                    break;
                };
                let Some(i) = queues.get_mut(&customer).and_then(VecDeque::pop_front) else {
                    continue;
                };
                let message = &messages[i].message;
                let publish = PublishMessage::build()
                    .payload(bytes::Bytes::from(message.body.clone()))
                    .message_id(message.dedupe_id(&consumer.id))
                    .header("Content-Type", "application/cloudevents+json");
                let subject = message.subject(&self.settings.subject_prefix, &consumer.id);
                match self.js.send_publish(subject, publish).await {
                    Ok(ack) => in_flight.push(async move { (i, customer, ack.await) }),
                    Err(e) => error = Some(RelayError::nats(format!("publish: {e}"))),
                }
            }
            let Some((i, customer, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(ack) if ack.stream == self.settings.name => {
                    stored[i] = true;
                    if queues.get(&customer).is_some_and(|q| !q.is_empty()) {
                        ready.push_back(customer);
                    }
                }
                Ok(ack) => {
                    error.get_or_insert(RelayError::Nats(format!(
                        "subject is captured by stream {} instead of {}",
                        ack.stream, self.settings.name
                    )));
                }
                Err(e) => {
                    error.get_or_insert(RelayError::nats(format!("PubAck: {e}")));
                }
            }
        }
        let first_unhandled = stored.iter().position(|s| !s);
        // Erasures up to the first message not stored: by then every message of the customer
        // this step sends (their erasure notice last) is in the stream.
        let handled_before = first_unhandled.map(|i| messages[i].message.position);
        let mut stopped_at = None;
        for erased in &batch.erasures {
            if handled_before.is_some_and(|p| erased.position >= p) {
                break;
            }
            if cancel.is_cancelled() {
                stopped_at = Some(erased.position);
                break;
            }
            if let Err(e) = self.remove_customer(erased).await {
                stopped_at = Some(erased.position);
                error.get_or_insert(e);
                break;
            }
        }
        if error.is_some() {
            // A lost stream (e.g. NATS restarted without its storage) is created again before
            // the retry; the checkpoint keeps what was already delivered from being re-sent.
            if let Err(e) = ensure_stream(&self.js, &self.settings).await {
                tracing::debug!(error = %e, "could not check the stream after a failed publish");
            }
        }
        Sent {
            delivered: stored
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.then_some(i))
                .collect(),
            first_unhandled,
            error,
            retry_in: None,
            stopped_at,
        }
    }

    /// Removes every message of an erased customer from the stream, for every consumer
    /// (disabled ones too), but the erasure notices, whose subject the filter does not match.
    /// Each is erased by sequence, which overwrites its bytes in NATS's storage (a purge only
    /// marks them deleted); a filtered purge then takes whatever the listing missed.
    /// Idempotent: after a failure the step retries from before the erasure.
    async fn remove_customer(&self, customer: &Erased) -> Result<(), RelayError> {
        let prefix = &self.settings.subject_prefix;
        let mut filters = vec![envelope::customer_data_subjects(
            prefix,
            customer.customer_id,
        )];
        filters.extend(
            customer
                .aliases
                .iter()
                .map(|(consumer, alias)| envelope::aliased_data_subjects(prefix, consumer, *alias)),
        );
        let stream = self
            .js
            .get_stream_no_info(&self.settings.name)
            .await
            .map_err(RelayError::nats)?;
        let (mut erased, mut purged) = (0u64, 0u64);
        for filter in &filters {
            for (sequence, _) in self.sequences(&stream, filter).await? {
                match stream.delete_message(sequence).await {
                    Ok(_) => erased += 1,
                    // Gone already: another consumer's task erased it, or it aged out.
                    Err(e) if is_sequence_not_found(&e) => {}
                    Err(e) => return Err(RelayError::nats(format!("erasing a message: {e}"))),
                }
            }
            purged += stream
                .purge()
                .filter(filter)
                .await
                .map_err(|e| RelayError::nats(format!("purging an erased customer: {e}")))?
                .purged;
        }
        // What a survivor sent of the customer while merged: only those messages of the
        // survivor's subjects, by their ids.
        for copies in &customer.copies {
            let ids: std::collections::HashSet<&str> =
                copies.message_ids.iter().map(String::as_str).collect();
            let mut filters = vec![envelope::customer_data_subjects(prefix, copies.customer_id)];
            filters.extend(copies.aliases.iter().map(|(consumer, alias)| {
                envelope::aliased_data_subjects(prefix, consumer, *alias)
            }));
            for filter in &filters {
                for (sequence, id) in self.sequences(&stream, filter).await? {
                    if !id.is_some_and(|id| ids.contains(id.as_str())) {
                        continue;
                    }
                    match stream.delete_message(sequence).await {
                        Ok(_) => erased += 1,
                        Err(e) if is_sequence_not_found(&e) => {}
                        Err(e) => return Err(RelayError::nats(format!("erasing a message: {e}"))),
                    }
                }
            }
        }
        tracing::info!(
            erased,
            purged,
            "removed an erased customer's messages from the stream"
        );
        Ok(())
    }

    /// The stream sequences of the messages under `filter`, with each one's `Nats-Msg-Id`,
    /// read through a short-lived ordered consumer that fetches headers only.
    async fn sequences(
        &self,
        stream: &stream::Stream<()>,
        filter: &str,
    ) -> Result<Vec<(u64, Option<String>)>, RelayError> {
        let listing = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(RelayError::nats)?;
        let name = listing.cached_info().name.clone();
        let listed = Self::list(listing, self.request_timeout).await;
        // Deleted rather than left to expire: a consumer catching up from the beginning meets
        // every erasure ever made.
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "could not delete the listing consumer; it expires");
        }
        listed
    }

    async fn list(
        listing: jetstream::consumer::Consumer<pull::OrderedConfig>,
        timeout: Duration,
    ) -> Result<Vec<(u64, Option<String>)>, RelayError> {
        let mut pending = listing.cached_info().num_pending;
        let mut sequences = Vec::new();
        if pending == 0 {
            return Ok(sequences);
        }
        let mut messages = listing.messages().await.map_err(RelayError::nats)?;
        while pending > 0 {
            let next = tokio::time::timeout(timeout, messages.next())
                .await
                .map_err(|_| {
                    RelayError::Nats("listing an erased customer's messages timed out".to_owned())
                })?;
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(RelayError::nats(e)),
                None => return Err(RelayError::Nats("the listing ended early".to_owned())),
            };
            let info = message.info().map_err(RelayError::nats)?;
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned());
            sequences.push((info.stream_sequence, id));
            pending = info.pending;
        }
        Ok(sequences)
    }
}

fn is_sequence_not_found(e: &jetstream::stream::DeleteMessageError) -> bool {
    matches!(
        e.kind(),
        jetstream::stream::DeleteMessageErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::SEQUENCE_NOT_FOUND
    )
}

/// Reads acknowledgements from the ack stream until cancelled, recording each as consumer
/// state. Malformed or unmatched acks are logged and dropped; a database failure leaves the
/// ack in the stream to be redelivered.
pub async fn run_ack_intake(
    js: jetstream::Context,
    deliveries: Deliveries,
    ledger: Ledger,
    config: NatsConfig,
    retry: Backoff,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        match intake(&js, &deliveries, &ledger, &config, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "ack intake failed; retrying");
                let wait = retry.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn intake(
    js: &jetstream::Context,
    deliveries: &Deliveries,
    ledger: &Ledger,
    config: &NatsConfig,
    cancel: &CancellationToken,
) -> Result<(), RelayError> {
    ensure(
        js,
        stream::Config {
            name: config.ack_stream.clone(),
            subjects: vec![format!("{}.*", config.ack_subject_prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            description: Some(
                "idledger: consumer acknowledgements waiting to be recorded".to_owned(),
            ),
            ..Default::default()
        },
    )
    .await?;
    let stream = js
        .get_stream(&config.ack_stream)
        .await
        .map_err(RelayError::nats)?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &config.ack_durable,
            pull::Config {
                durable_name: Some(config.ack_durable.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(RelayError::nats)?;
    let mut messages = consumer.messages().await.map_err(RelayError::nats)?;
    let prefix = format!("{}.", config.ack_subject_prefix);
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(RelayError::nats(e)),
            None => return Err(RelayError::Nats("the ack subscription ended".to_owned())),
        };
        let consumer_id = message
            .subject
            .as_str()
            .strip_prefix(&prefix)
            .map(ConsumerId::parse);
        let consumer = match consumer_id {
            Some(Ok(id)) => deliveries.consumer(&id).await,
            _ => Ok(None),
        };
        let outcome = match consumer {
            Ok(Some(consumer)) => {
                let signature = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(acks::SIGNATURE_HEADER))
                    .map(|v| v.as_str());
                match acks::authenticate(ledger, &consumer, signature, &message.payload) {
                    Ok(()) => {
                        acks::intake(deliveries, ledger, &consumer, "nats", &message.payload).await
                    }
                    Err(refusal) => {
                        acks::count("nats", refusal.label());
                        tracing::warn!(subject = %message.subject, reason = %refusal, "refused an acknowledgement");
                        message
                            .ack_with(jetstream::AckKind::Term)
                            .await
                            .map_err(RelayError::nats)?;
                        continue;
                    }
                }
            }
            Ok(None) => Ok(AckOutcome::Invalid(format!(
                "subject {} names no registered consumer",
                message.subject
            ))),
            Err(e) => Err(e),
        };
        let kind = match outcome {
            Ok(AckOutcome::Recorded | AckOutcome::Superseded { .. }) => jetstream::AckKind::Ack,
            Ok(AckOutcome::Invalid(reason)) => {
                tracing::warn!(subject = %message.subject, reason, "dropped an invalid acknowledgement");
                jetstream::AckKind::Term
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record an acknowledgement; it will be redelivered");
                jetstream::AckKind::Nak(Some(Duration::from_secs(1)))
            }
        };
        message.ack_with(kind).await.map_err(RelayError::nats)?;
    }
}
