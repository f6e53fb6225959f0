//! `docs/configuration.md` documents every key the parser accepts: for each section of
//! `bascule::config::SCHEMA`, a heading (`## ` or `### `) that names the section in backticks,
//! and under it, before the next such heading, a table row `` | `key` | `` for each key.

use bascule::config::SCHEMA;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

fn is_heading(line: &str) -> bool {
    line.starts_with("## ") || line.starts_with("### ")
}

/// The lines under each heading that names `section`, up to the next heading.
fn sections<'d>(lines: &[&'d str], section: &str) -> Vec<&'d str> {
    let name = format!("`{section}`");
    let mut under = Vec::new();
    let mut inside = false;
    for line in lines {
        if is_heading(line) {
            inside = line.contains(&name);
        } else if inside {
            under.push(*line);
        }
    }
    under
}

/// Every `section.key` of `schema` that `doc` does not document.
fn undocumented(doc: &str, schema: &[(&str, &[&str])]) -> Vec<String> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut missing = Vec::new();
    for (section, keys) in schema {
        let under = sections(&lines, section);
        for key in *keys {
            let row = format!("| `{key}` |");
            if !under.iter().any(|line| line.starts_with(&row)) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    missing
}

#[test]
fn every_key_of_the_schema_is_documented() {
    let doc = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"));
    let missing = undocumented(&doc, SCHEMA);
    assert!(
        missing.is_empty(),
        "{DOC} does not document {} key(s) (expected, per section, a heading `## ` or `### ` \
         naming it in backticks, and under it a row | `key` |):\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// The check itself: a key documented under another section's heading, or only in prose,
/// is missing.
#[test]
fn a_key_is_documented_only_by_its_row_under_its_section() {
    let doc = "# Configuration\n\n### `http`\n\n| key | default |\n|---|---|\n| `listen` | 127.0.0.1:9469 |\n\nThe `token_file` key ...\n\n### `conntrack`\n\n| `token_file` | none |\n";
    let schema: &[(&str, &[&str])] = &[("http", &["listen", "token_file"])];
    assert_eq!(undocumented(doc, schema), ["http.token_file"]);
    let schema: &[(&str, &[&str])] = &[("services[]", &["name"])];
    assert_eq!(undocumented(doc, schema), ["services[].name"]);
}
