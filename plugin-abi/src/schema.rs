//! Checking a plugin's config against its JSON Schema (`ConfigProvider::SCHEMA`): one
//! definition for the gateway and for `MockHost`, so a unit test refuses exactly what the
//! gateway refuses, in the same words.

/// Every place `config` breaks `schema`, in document order: (field, rule), the field as a dotted
/// path (`limits.max`, `(root)` for the top level). `Err` if `schema` is not valid JSON Schema.
pub fn violations(schema: &serde_json::Value, config: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    Ok(validator
        .iter_errors(config)
        .map(|error| {
            let pointer = error.instance_path.to_string();
            let field = if pointer.is_empty() {
                "(root)".to_owned()
            } else {
                pointer.trim_start_matches('/').replace('/', ".")
            };
            (field, error.to_string())
        })
        .collect())
}
