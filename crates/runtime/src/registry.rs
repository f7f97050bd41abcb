//! Schema ids the built-in catalogue does not know are looked up in a Confluent-compatible
//! schema registry when one is configured. Lookups are cached, failures too (for a minute), so
//! a stream of records with a bad id costs one request a minute, not one per record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{get_schema_by_id, SrSettings};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url}: {detail}")]
    Request { url: String, detail: String },
    #[error("schema {id} from the registry is not valid avro: {detail}")]
    Parse { id: u32, detail: String },
    #[error("schema {0} is unknown (registry lookup failed recently)")]
    RecentlyFailed(u32),
}

pub struct RegistryClient {
    url: String,
    settings: SrSettings,
    runtime: tokio::runtime::Handle,
    failed: HashMap<u32, Instant>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .finish()
    }
}

impl RegistryClient {
    /// `runtime` runs the HTTP requests; the caller is a blocking processing thread.
    pub fn new(url: &str, runtime: tokio::runtime::Handle) -> RegistryClient {
        RegistryClient {
            url: url.to_owned(),
            settings: SrSettings::new(url.to_owned()),
            runtime,
            failed: HashMap::new(),
        }
    }

    /// Fetches the writer schema of `id`. Blocking: call from the processing thread only.
    pub fn fetch(&mut self, id: u32) -> Result<Schema, RegistryError> {
        if let Some(at) = self.failed.get(&id) {
            if at.elapsed() < Duration::from_secs(60) {
                return Err(RegistryError::RecentlyFailed(id));
            }
        }
        let res = self.runtime.block_on(get_schema_by_id(id, &self.settings));
        match res {
            Ok(registered) => {
                Schema::parse_str(&registered.schema).map_err(|e| RegistryError::Parse {
                    id,
                    detail: e.to_string(),
                })
            }
            Err(e) => {
                self.failed.insert(id, Instant::now());
                Err(RegistryError::Request {
                    url: self.url.clone(),
                    detail: e.to_string(),
                })
            }
        }
    }
}
