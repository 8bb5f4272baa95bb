//! Opens the store the settings name: the database (migrated), the master key and the ledger.

use std::io::{ErrorKind, Write as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use idledger_store::{EventLog, KeyEncryptionKey as _, Ledger, LedgerOptions, MasterKey, Store};
use zeroize::Zeroizing;

use crate::config::{KeySource, MASTER_KEY_ENV, Settings};

/// What a command does with the master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// It reads or writes personal data: the configured key is required (and generated for a
    /// new embedded store).
    Required,
    /// It reads no payloads (verification covers the ciphertext), so it runs without a key.
    NotNeeded,
}

/// Opens the database and applies pending migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    if settings.database.sqlite_path().is_some() && !settings.database_given() {
        settings.ensure_data_dir()?;
    }
    let url = settings.database.url()?;
    Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database {}", settings.database))
}

/// Opens the database and starts a ledger on it with the configured policy and key.
pub async fn open_ledger(settings: &Settings, key_use: KeyUse) -> anyhow::Result<Ledger> {
    let policy = settings.load_policy()?;
    if key_use == KeyUse::NotNeeded {
        // The ledger wants a key; this one never unwraps anything (nor reads the stored root).
        let store = open_store(settings).await?;
        return Ok(Ledger::new(
            &store,
            MasterKey::generate(),
            policy,
            LedgerOptions::default(),
        ));
    }
    let (store, master) = open_with_key(settings, Rewrap::Refused).await?;
    let ledger = Ledger::open(&store, master, policy, LedgerOptions::default()).await?;
    // Rewrites a new version needs that only the key makes possible (e.g. keying value
    // hashes): once, by the first command that has the key.
    ledger
        .run_pending_upgrades()
        .await
        .context("cannot upgrade the stored data to this version")?;
    Ok(ledger)
}

/// Whether opening goes on while a rewrap of the keys is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrap {
    /// Only `idledger keys rewrap`, which finishes it.
    Allowed,
    Refused,
}

/// Opens the database with the configured master key, checked against the store's.
pub async fn open_with_key(
    settings: &Settings,
    rewrap: Rewrap,
) -> anyhow::Result<(Store, MasterKey)> {
    // Before connecting: a missing key is a configuration error, whatever the server says.
    check_key_source(settings)?;
    let store = open_store(settings).await?;
    if rewrap == Rewrap::Refused {
        // Before the key check, which the new key would fail with a less helpful message.
        store.keys().refuse_unfinished_rewrap().await?;
    }
    let log = store.log();
    let key = master_key(settings, &log).await?;
    check_key_matches(settings, &log, &key).await?;
    Ok((store, key))
}

fn check_key_source(settings: &Settings) -> anyhow::Result<()> {
    if settings.database.is_postgres()
        && matches!(
            settings.master_key,
            KeySource::File {
                explicit: false,
                ..
            }
        )
    {
        bail!(
            "no master key for the PostgreSQL database {}: set {MASTER_KEY_ENV} to the key \
             (64 hex characters), or --master-key-file / IDLEDGER__MASTER_KEY_FILE to a file \
             holding it. A key is generated only for the embedded SQLite store; a production \
             database's key must be provisioned and backed up deliberately",
            settings.database
        );
    }
    Ok(())
}

async fn master_key(settings: &Settings, log: &EventLog) -> anyhow::Result<MasterKey> {
    check_key_source(settings)?;
    let (path, explicit) = match &settings.master_key {
        KeySource::Env(hex) => {
            return MasterKey::from_hex(hex)
                .with_context(|| format!("{MASTER_KEY_ENV} does not hold a valid master key"));
        }
        KeySource::File { path, explicit } => (path, *explicit),
    };
    if let Some(key) = read_key_file(path)? {
        return Ok(key);
    }
    if explicit {
        bail!("the master key file {} does not exist", path.display());
    }
    // Only a new store gets a new key: with events already stored, the old key is needed.
    let events = log
        .head_position()
        .await
        .context("cannot read the log's length")?;
    if events > 0 {
        bail!(
            "the database {} holds {events} events but the master key file {} is missing; \
             restore the key file (or set {MASTER_KEY_ENV}): the events cannot be read without \
             the key they were written with",
            settings.database,
            path.display()
        );
    }
    generate_key_file(path)
}

/// Refuses a master key that is not the one the store was written with. The store keeps the
/// key's check value (recorded the first time a key is known to be right: on a new store, or
/// once it unwrapped a customer's data key), so a wrong key is refused even when every
/// customer whose data key could have told was erased. Without this, reads served from the
/// projection would not notice, and new data keys would be wrapped under the wrong key: one
/// store, two master keys.
async fn check_key_matches(
    settings: &Settings,
    log: &EventLog,
    key: &MasterKey,
) -> anyhow::Result<()> {
    let wrong = || {
        let source = match &settings.master_key {
            KeySource::Env(_) => MASTER_KEY_ENV.to_owned(),
            KeySource::File { path, .. } => format!("the key file {}", path.display()),
        };
        anyhow::anyhow!(
            "the master key from {source} is not the key the database {} was written with",
            settings.database
        )
    };
    let stored = log
        .master_key_check()
        .await
        .context("cannot read the master key's check value")?;
    if let Some(stored) = stored {
        return if key.matches_check(&stored) {
            Ok(())
        } else {
            Err(wrong())
        };
    }
    // A store from before check values: a data key tells (any customer's, not only the
    // first's, who may be erased). With none left, nothing readable remains to protect.
    if let Some((customer, wrapped)) = log.any_data_key().await?
        && key.unwrap_key(&wrapped, customer).is_err()
    {
        return Err(wrong());
    }
    let standing = log
        .record_master_key_check(&key.check_value())
        .await
        .context("cannot record the master key's check value")?;
    if key.matches_check(&standing) {
        Ok(())
    } else {
        Err(wrong())
    }
}

pub fn read_key_file(path: &Path) -> anyhow::Result<Option<MasterKey>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the master key file {}", path.display()));
        }
    };
    warn_if_readable_by_others(path);
    MasterKey::from_hex(&text).map(Some).with_context(|| {
        format!(
            "the master key file {} does not hold a valid master key",
            path.display()
        )
    })
}

fn generate_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    }
    let key = MasterKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        // Another process generated it first: use theirs.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return read_key_file(path)?
                .with_context(|| format!("the master key file {} vanished", path.display()));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create the master key file {}", path.display()));
        }
    };
    file.write_all(key.to_hex().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the master key file {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "generated a new master key for this store; back the file up: without it the stored data cannot be read"
    );
    Ok(key)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the master key file is readable by other users; restrict it with chmod 600"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}
