//! Pseudonymous customer ids: what a consumer registered as pseudonymous sees instead of a
//! customer's id.
//!
//! A consumer's alias of a customer is the customer id's 16 bytes encrypted with AES-256 (one
//! block: a keyed permutation) under a key of that consumer, derived from the master key. So
//! an alias is stable (the consumer can join on it), differs per consumer (two consumers cannot
//! link their customers), reveals nothing of the id (not even its creation time, which a UUIDv7
//! carries), and idledger turns it back into the id without storing any mapping. What the
//! consumer sends back (acks, snapshots) is decrypted and must give a customer id (a UUIDv7):
//! anything else is refused, so a guessed alias is caught 63 times in 64 even before it is
//! looked up. An alias is written like a UUID but is not a UUIDv7.

use std::fmt;

use aes::Aes256;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::delivery::ConsumerId;
use crate::ids::CustomerId;
use crate::values::ValueError;

const LEN: usize = 32;

/// The key every consumer's [`AliasKey`] is derived from (derived from the master key).
#[derive(Clone)]
pub struct AliasRoot([u8; LEN]);

impl fmt::Debug for AliasRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AliasRoot(…)")
    }
}

impl AliasRoot {
    pub fn new(bytes: [u8; LEN]) -> Self {
        Self(bytes)
    }

    /// The key `consumer`'s aliases are made with.
    pub fn for_consumer(&self, consumer: &ConsumerId) -> AliasKey {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(b"idledger customer alias key v1\0");
        mac.update(consumer.as_str().as_bytes());
        let key: [u8; LEN] = mac.finalize().into_bytes().into();
        AliasKey(Aes256::new(&key.into()))
    }
}

/// One consumer's alias key.
#[derive(Clone)]
pub struct AliasKey(Aes256);

impl fmt::Debug for AliasKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AliasKey(…)")
    }
}

impl AliasKey {
    /// The consumer's alias of `customer`.
    pub fn alias(&self, customer: CustomerId) -> Uuid {
        let mut block = (*customer.as_uuid().as_bytes()).into();
        self.0.encrypt_block(&mut block);
        Uuid::from_bytes(block.into())
    }

    /// The customer `alias` stands for; `None` if it is no alias of a customer under this key.
    pub fn resolve(&self, alias: Uuid) -> Option<CustomerId> {
        let mut block = (*alias.as_bytes()).into();
        self.0.decrypt_block(&mut block);
        CustomerId::from_uuid(Uuid::from_bytes(block.into())).ok()
    }
}

/// How a consumer names customers: by their ids, or (registered as pseudonymous) by its own
/// aliases of them.
#[derive(Debug, Clone)]
pub enum CustomerNames {
    Ids,
    Aliases(Box<AliasKey>),
}

impl CustomerNames {
    /// What the consumer is shown for `customer`.
    pub fn show(&self, customer: CustomerId) -> Uuid {
        match self {
            Self::Ids => customer.as_uuid(),
            Self::Aliases(key) => key.alias(customer),
        }
    }

    /// The customer a name the consumer sent stands for.
    pub fn resolve(&self, name: &str) -> Result<CustomerId, ValueError> {
        match self {
            Self::Ids => CustomerId::parse(name),
            Self::Aliases(key) => Uuid::try_parse(name)
                .ok()
                .and_then(|alias| key.resolve(alias))
                .ok_or_else(|| {
                    ValueError::new(
                        "customer id",
                        "is not one of this consumer's customer aliases",
                    )
                }),
        }
    }

    pub fn is_pseudonymous(&self) -> bool {
        matches!(self, Self::Aliases(_))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn consumer(id: &str) -> ConsumerId {
        ConsumerId::parse(id).unwrap()
    }

    #[test]
    fn aliases_are_stable_per_consumer_and_resolve_back() {
        let root = AliasRoot::new([9; LEN]);
        let crm = CustomerNames::Aliases(Box::new(root.for_consumer(&consumer("crm"))));
        let cdp = CustomerNames::Aliases(Box::new(root.for_consumer(&consumer("cdp"))));
        for _ in 0..200 {
            let c = CustomerId::generate();
            let alias = crm.show(c);
            assert_eq!(crm.show(c), alias, "stable");
            assert_ne!(alias, c.as_uuid());
            assert_ne!(cdp.show(c), alias, "per consumer");
            assert_eq!(crm.resolve(&alias.to_string()).unwrap(), c);
            // Another consumer's alias, or the id itself, is not this consumer's name for it.
            assert_ne!(crm.resolve(&cdp.show(c).to_string()).ok(), Some(c));
            assert_ne!(crm.resolve(&c.to_string()).ok(), Some(c));
        }
    }

    #[test]
    fn ids_are_shown_as_they_are() {
        let c = CustomerId::generate();
        assert_eq!(CustomerNames::Ids.show(c), c.as_uuid());
        assert_eq!(CustomerNames::Ids.resolve(&c.to_string()).unwrap(), c);
        assert!(!CustomerNames::Ids.is_pseudonymous());
    }

    #[test]
    fn names_that_are_no_alias_are_refused() {
        let names = CustomerNames::Aliases(Box::new(
            AliasRoot::new([1; LEN]).for_consumer(&consumer("crm")),
        ));
        assert!(names.resolve("not a uuid").is_err());
        // Names that are no alias decrypt to a UUIDv7 of the right variant about once in 64.
        let refused = (0..256u128)
            .filter(|i| {
                let name =
                    Uuid::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
                names.resolve(&name.to_string()).is_err()
            })
            .count();
        assert!(refused > 200, "{refused}");
        assert!(!format!("{names:?}").contains("Aes"));
    }
}
