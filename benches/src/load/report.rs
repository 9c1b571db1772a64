//! The end-of-run summary: one `key=value` line, and the same fields as JSON.

use serde_json::Value;

#[derive(Default)]
pub struct Report {
    fields: Vec<(String, Value)>,
}

impl Report {
    pub fn put(&mut self, key: &str, v: impl Into<Value>) -> &mut Self {
        self.fields.push((key.to_string(), v.into()));
        self
    }

    /// A float rounded to `decimals` places.
    pub fn put_f(&mut self, key: &str, v: f64, decimals: i32) -> &mut Self {
        let m = 10f64.powi(decimals);
        let r = (v * m).round() / m;
        let value = serde_json::Number::from_f64(r)
            .map(Value::Number)
            .unwrap_or(Value::Null);
        self.fields.push((key.to_string(), value));
        self
    }

    pub fn line(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            if v.is_array() {
                // Lists (e.g. every slow subscriber's disconnect time) go to the JSON only.
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            match v {
                Value::String(s) => out.push_str(s),
                Value::Null => out.push_str("na"),
                other => out.push_str(&other.to_string()),
            }
        }
        out
    }

    pub fn json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::String(k.clone()).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
        out
    }

    /// Prints the summary line on stdout (or stderr when the JSON goes to stdout) and writes
    /// the JSON where asked. Returns false if the JSON file could not be written.
    pub fn emit(&self, json: Option<&str>) -> bool {
        match json {
            Some("-") => {
                eprintln!("{}", self.line());
                println!("{}", self.json());
                true
            }
            Some(path) => {
                println!("{}", self.line());
                match std::fs::write(path, self.json() + "\n") {
                    Ok(()) => true,
                    Err(e) => {
                        eprintln!("ringfan-load: cannot write --json {path}: {e}");
                        false
                    }
                }
            }
            None => {
                println!("{}", self.line());
                true
            }
        }
    }
}
