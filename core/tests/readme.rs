//! The configuration a newcomer copies from the README and the repository's
//! own `wrangler.toml` are valid as written: parsed like the Worker reads
//! them (the `[vars.FRAGCACHE]` table as JSON) and validated by the core.

use fragcache_core::config::Config;

fn fragcache_table(toml_text: &str, what: &str) -> serde_json::Value {
    let doc: toml::Table = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{what}: {e}"));
    let vars = doc
        .get("vars")
        .and_then(|v| v.get("FRAGCACHE"))
        .unwrap_or_else(|| panic!("{what}: no [vars.FRAGCACHE]"));
    serde_json::to_value(vars).expect("TOML converts to JSON")
}

#[test]
fn the_readme_configuration_example_is_valid() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```toml\n[[kv_namespaces]]")
        .expect("the configuration example");
    let body = &readme[start + "```toml\n".len()..];
    let example = &body[..body.find("```").expect("end of the example")];
    let json = fragcache_table(example, "README example");
    let config = Config::from_json(&json).unwrap_or_else(|e| panic!("README example: {e}"));
    assert!(!config.fragments.is_empty());
}

#[test]
fn the_repository_wrangler_toml_is_valid() {
    let json = fragcache_table(include_str!("../../wrangler.toml"), "wrangler.toml");
    Config::from_json(&json).unwrap_or_else(|e| panic!("wrangler.toml: {e}"));
}
