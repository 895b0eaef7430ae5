//! README.md's configuration reference is the table the declaration of the
//! keys renders, so the documentation cannot drift from the loader.

use std::path::Path;

/// README's table: from its header row to the first line that is not a row.
fn readme_table() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let mut table = String::new();
    for line in readme
        .lines()
        .skip_while(|line| !line.starts_with("| Key | Type | Default | Meaning |"))
        .take_while(|line| line.starts_with('|'))
    {
        table.push_str(line);
        table.push('\n');
    }
    table
}

#[test]
fn the_readme_table_is_the_declared_one() {
    let declared = limits::config::reference_table();
    assert!(
        readme_table() == declared,
        "README.md's configuration table differs from limits::config::reference_table(); \
         replace it with:\n\n{declared}"
    );
}
