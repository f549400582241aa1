//! The settings the engine judges each key by: the deployment's seed, with each owner's own
//! defaults and per-key overrides laid over it, held in memory so a charge reads no database.
//! The store's change feed says when an owner's settings changed (whichever node changed them):
//! that owner is read again on its next charge; when the feed may have missed something, all of
//! them are.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use opentab_core::Address;
use opentab_core::rules::{RuleOverrides, RuleSettings};
use opentab_store::{KeyChange, Store, StoredRuleSettings};

use crate::{Error, Result};

/// One owner's stored settings.
#[derive(Debug, Default)]
struct OwnerRules {
    defaults: RuleOverrides,
    keys: HashMap<Address, RuleOverrides>,
}

#[derive(Debug, Default)]
struct Known {
    owners: HashMap<Address, Arc<OwnerRules>>,
    /// Owners whose settings changed since they were read (absent from `owners`).
    stale: HashSet<Address>,
    /// Every owner's settings may have changed: none is known until all are read again.
    everything_stale: bool,
    /// Counts changes heard, so a read that raced one is not kept.
    generation: u64,
}

/// Every owner's settings over the seed (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct SettingsCache {
    seed: RuleSettings,
    known: Arc<Mutex<Known>>,
}

impl SettingsCache {
    /// Reads every owner's settings from `store` and listens for changes to them.
    pub(crate) async fn start(store: &Store, seed: RuleSettings) -> Result<Self> {
        let known = Arc::new(Mutex::new(Known::default()));
        let weak = Arc::downgrade(&known);
        store.on_key_change(move |change| {
            let Some(known) = weak.upgrade() else { return false };
            if let Ok(mut known) = known.lock() {
                known.generation += 1;
                match change {
                    KeyChange::Owner(owner) => {
                        known.owners.remove(&owner);
                        known.stale.insert(owner);
                    }
                    // A key change names its key, not its owner: settings are announced by owner.
                    KeyChange::Key(_) => {}
                    KeyChange::Everything => {
                        known.owners.clear();
                        known.stale.clear();
                        known.everything_stale = true;
                    }
                }
            }
            true
        });
        let cache = Self { seed, known };
        let generation = cache.generation()?;
        cache.keep(store.all_rule_settings().await?, None, generation)?;
        Ok(cache)
    }

    fn generation(&self) -> Result<u64> {
        Ok(self.known.lock().map_err(|_| Error::Poisoned)?.generation)
    }

    /// The settings in force for `owner`'s `key`.
    pub(crate) async fn effective(&self, store: &Store, owner: Address, key: Address) -> Result<RuleSettings> {
        let (generation, everything) = {
            let known = self.known.lock().map_err(|_| Error::Poisoned)?;
            if let Some(rules) = known.owners.get(&owner) {
                return Ok(self.over(rules, key));
            }
            if !known.everything_stale && !known.stale.contains(&owner) {
                return Ok(self.seed.clone());
            }
            (known.generation, known.everything_stale)
        };
        let rules = if everything {
            let all = store.all_rule_settings().await?;
            let mine = all.iter().filter(|s| s.owner == owner).cloned().collect::<Vec<_>>();
            self.keep(all, None, generation)?;
            owner_rules(mine)
        } else {
            let mine = store.rule_settings_of(owner).await?;
            self.keep(mine.clone(), Some(owner), generation)?;
            owner_rules(mine)
        };
        Ok(self.over(&rules, key))
    }

    /// Keeps what was read (all owners', or `only` one's), unless a change was heard since
    /// `generation`.
    fn keep(&self, read: Vec<StoredRuleSettings>, only: Option<Address>, generation: u64) -> Result<()> {
        let mut known = self.known.lock().map_err(|_| Error::Poisoned)?;
        if known.generation != generation {
            return Ok(());
        }
        let mut by_owner: HashMap<Address, Vec<StoredRuleSettings>> = HashMap::new();
        for stored in read {
            by_owner.entry(stored.owner).or_default().push(stored);
        }
        match only {
            Some(owner) => {
                let rules = owner_rules(by_owner.remove(&owner).unwrap_or_default());
                known.owners.insert(owner, Arc::new(rules));
                known.stale.remove(&owner);
            }
            None => {
                known.owners = by_owner.into_iter().map(|(owner, s)| (owner, Arc::new(owner_rules(s)))).collect();
                known.stale.clear();
                known.everything_stale = false;
            }
        }
        Ok(())
    }

    fn over(&self, rules: &OwnerRules, key: Address) -> RuleSettings {
        let with_owner = self.seed.clone().with(&rules.defaults);
        match rules.keys.get(&key) {
            Some(overrides) => with_owner.with(overrides),
            None => with_owner,
        }
    }
}

fn owner_rules(stored: Vec<StoredRuleSettings>) -> OwnerRules {
    let mut rules = OwnerRules::default();
    for s in stored {
        match s.key {
            Some(key) => {
                rules.keys.insert(key, s.overrides);
            }
            None => rules.defaults = s.overrides,
        }
    }
    rules
}
