//! The reference table of README.md's "Configuration", rendered from the
//! declaration so that the documentation cannot drift from the keys.

use super::declare::Row;
use super::keys::SECTIONS;

/// Keys README documents with the rest of the rate limit service, in its
/// `limits.rls` table beside the domain mappings they switch on, rather
/// than in the general table.
const DOCUMENTED_WITH_RLS: &[&str] = &["rls.enabled", "rls.dry_run", "rls.ietf_headers"];

/// Every row of the table, in order.
fn rows() -> Vec<Row> {
    let hidden: Vec<String> = DOCUMENTED_WITH_RLS
        .iter()
        .map(|key| format!("`{key}`"))
        .collect();
    SECTIONS
        .iter()
        .flat_map(|section| (section.rows)())
        .filter(|row| !hidden.contains(&row.key))
        .collect()
}

/// The Markdown table of every config key: its type, default and meaning.
/// README.md's "Configuration" holds exactly this table (a test checks it).
pub fn reference_table() -> String {
    let mut table = String::from("| Key | Type | Default | Meaning |\n|---|---|---|---|\n");
    for Row {
        key,
        ty,
        default,
        meaning,
    } in rows()
    {
        table.push_str(&format!("| {key} | {ty} | {default} | {meaning} |\n"));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::super::declare::join;
    use super::*;

    #[test]
    fn the_keys_documented_elsewhere_are_declared() {
        for key in DOCUMENTED_WITH_RLS {
            let declared = SECTIONS.iter().any(|section| {
                section
                    .keys
                    .iter()
                    .any(|k| join(section.at, k.name) == *key)
            });
            assert!(declared, "{key} is not a declared key");
        }
    }

    #[test]
    fn every_row_has_a_meaning_and_a_type() {
        for row in rows() {
            assert!(!row.meaning.is_empty(), "{row:?}");
            assert!(!row.ty.is_empty(), "{row:?}");
            assert!(!row.default.is_empty(), "{row:?}");
        }
    }
}
