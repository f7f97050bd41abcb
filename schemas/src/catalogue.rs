//! The built-in schema catalogue (`schemas/catalogue.toml`): subjects, versions and pinned ids,
//! with the `.avsc` files embedded in the binary so a service needs no files at run time.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::Schema;
use serde::Deserialize;

const CATALOGUE_TOML: &str = include_str!("../catalogue.toml");

/// Every schema file of the catalogue, embedded. A test checks this list against the folder.
pub const FILES: &[(&str, &str)] = &[
    (
        "avro/telemetry/v1.avsc",
        include_str!("../avro/telemetry/v1.avsc"),
    ),
    (
        "avro/features/v1.avsc",
        include_str!("../avro/features/v1.avsc"),
    ),
    (
        "avro/forecasts/v1.avsc",
        include_str!("../avro/forecasts/v1.avsc"),
    ),
    (
        "avro/forecasts/v2.avsc",
        include_str!("../avro/forecasts/v2.avsc"),
    ),
    (
        "avro/recommendations/v1.avsc",
        include_str!("../avro/recommendations/v1.avsc"),
    ),
    (
        "avro/drift_alerts/v1.avsc",
        include_str!("../avro/drift_alerts/v1.avsc"),
    ),
    (
        "avro/drift_alerts/v2.avsc",
        include_str!("../avro/drift_alerts/v2.avsc"),
    ),
    (
        "avro/drift_state/v1.avsc",
        include_str!("../avro/drift_state/v1.avsc"),
    ),
    (
        "avro/drift_windows/v1.avsc",
        include_str!("../avro/drift_windows/v1.avsc"),
    ),
    (
        "avro/drift_windows/v2.avsc",
        include_str!("../avro/drift_windows/v2.avsc"),
    ),
    (
        "avro/model_events/v1.avsc",
        include_str!("../avro/model_events/v1.avsc"),
    ),
    ("avro/dlq/v1.avsc", include_str!("../avro/dlq/v1.avsc")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    subject: Vec<SubjectDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectDef {
    name: String,
    versions: Vec<VersionDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionDef {
    version: u32,
    id: u32,
    file: String,
}

/// One schema version of one subject.
#[derive(Debug, Clone)]
pub struct SchemaEntry {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub file: String,
    pub text: &'static str,
    pub schema: Schema,
}

/// The parsed catalogue. Obtain it with [`Catalogue::builtin`].
#[derive(Debug)]
pub struct Catalogue {
    entries: Vec<SchemaEntry>,
    by_id: HashMap<u32, usize>,
}

impl Catalogue {
    /// The catalogue compiled into this binary. Panics only if the embedded files are invalid,
    /// which the crate's tests rule out.
    pub fn builtin() -> &'static Catalogue {
        static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
        CATALOGUE.get_or_init(|| {
            Catalogue::parse(CATALOGUE_TOML).unwrap_or_else(|e| panic!("embedded catalogue: {e}"))
        })
    }

    fn parse(text: &str) -> Result<Catalogue, String> {
        let file: CatalogueFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        let mut by_id = HashMap::new();
        for subject in file.subject {
            for v in subject.versions {
                let text = FILES
                    .iter()
                    .find(|(path, _)| *path == v.file)
                    .map(|(_, text)| *text)
                    .ok_or_else(|| format!("{} is not embedded in catalogue::FILES", v.file))?;
                let schema = Schema::parse_str(text).map_err(|e| format!("{}: {e}", v.file))?;
                if by_id.insert(v.id, entries.len()).is_some() {
                    return Err(format!("schema id {} is used twice", v.id));
                }
                entries.push(SchemaEntry {
                    subject: subject.name.clone(),
                    version: v.version,
                    id: v.id,
                    file: v.file,
                    text,
                    schema,
                });
            }
        }
        Ok(Catalogue { entries, by_id })
    }

    pub fn by_id(&self, id: u32) -> Option<&SchemaEntry> {
        self.by_id.get(&id).map(|&i| &self.entries[i])
    }

    /// The newest version of a subject (the one writers use).
    pub fn latest(&self, subject: &str) -> Option<&SchemaEntry> {
        self.entries
            .iter()
            .filter(|e| e.subject == subject)
            .max_by_key(|e| e.version)
    }

    pub fn versions<'a>(&'a self, subject: &'a str) -> impl Iterator<Item = &'a SchemaEntry> + 'a {
        self.entries.iter().filter(move |e| e.subject == subject)
    }

    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }

    pub fn subjects(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.iter().map(|e| e.subject.as_str()).collect();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema_compatibility::SchemaCompatibility;

    #[test]
    fn builtin_parses_and_every_file_is_listed() {
        let cat = Catalogue::builtin();
        assert_eq!(cat.entries().len(), FILES.len());
        let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let dir = &format!("{root}/avro");
        let mut on_disk = Vec::new();
        for sub in std::fs::read_dir(dir).expect("avro dir") {
            let sub = sub.expect("entry").path();
            for f in std::fs::read_dir(&sub).expect("subject dir") {
                let f = f.expect("file").path();
                let rel = f
                    .strip_prefix(format!("{root}/"))
                    .expect("rel");
                on_disk.push(rel.to_string_lossy().into_owned());
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        listed.sort();
        assert_eq!(
            on_disk, listed,
            "every .avsc must be embedded and catalogued"
        );
    }

    /// Evolution rule: within a subject, every version reads data written by every earlier
    /// version (backward compatibility), and ids are unique.
    #[test]
    fn every_subject_stays_backward_compatible() {
        let cat = Catalogue::builtin();
        for subject in cat.subjects() {
            let versions: Vec<_> = cat.versions(subject).collect();
            for (i, newer) in versions.iter().enumerate() {
                for older in &versions[..i] {
                    SchemaCompatibility::can_read(&older.schema, &newer.schema).unwrap_or_else(
                        |e| {
                            panic!(
                                "{subject} v{} cannot read v{}: {e}",
                                newer.version, older.version
                            )
                        },
                    );
                }
            }
        }
    }

    #[test]
    fn the_compatibility_check_catches_a_breaking_change() {
        let old = Schema::parse_str(
            r#"{"type":"record","name":"T","fields":[{"name":"a","type":"long"}]}"#,
        )
        .expect("old");
        // A new required field without a default cannot read old data.
        let new = Schema::parse_str(
            r#"{"type":"record","name":"T","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#,
        )
        .expect("new");
        assert!(SchemaCompatibility::can_read(&old, &new).is_err());
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let text = r#"
[[subject]]
name = "a"
versions = [{ version = 1, id = 7, file = "avro/dlq/v1.avsc" }]
[[subject]]
name = "b"
versions = [{ version = 1, id = 7, file = "avro/dlq/v1.avsc" }]
"#;
        let err = Catalogue::parse(text).expect_err("duplicate id");
        assert!(err.contains("used twice"), "{err}");
    }
}
