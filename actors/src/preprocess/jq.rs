//! jq filters through jaq: compiled in the service (to check them), run in the jq worker
//! processes (`jq_pool.rs`), never on the async workers.
//!
//! jaq itself has no depth limit: `fromjson` on a string nested thousands of levels deep, or a
//! value built that deep by the filter, recurses until the stack overflows. Here `fromjson`
//! refuses text nested past `[server] max_json_depth`, outputs are measured without recursion
//! before they are written out, and the worker process (with its own stack and memory limit)
//! contains whatever is left.

use std::sync::Arc;

use jaq_core::box_iter::box_once;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::native::{v, Fun};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Cv, Exn, ValXs, Vars};
use jaq_json::Val;
use serde_json::Value;

type Data = data::JustLut<Val>;
type JqDef = jaq_core::Filter<Data>;

/// A compiled jq filter, cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct JqFilter {
    filter: Arc<JqDef>,
    source: Arc<str>,
}

impl std::fmt::Debug for JqFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JqFilter({:?})", self.source)
    }
}

impl JqFilter {
    pub fn compile(code: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs().filter(|f: &Fun<Data>| f.0 != "fromjson"))
            .chain([jaq_core::native::run::<Data>((
                "fromjson",
                v(0),
                fromjson_limited as jaq_core::RunPtr<Data>,
            ))]);
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errs| format!("cannot parse jq filter `{code}`: {}", describe_load(&errs)))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                format!(
                    "cannot compile jq filter `{code}`: {}",
                    describe_compile(&errs)
                )
            })?;
        Ok(Self {
            filter: Arc::new(filter),
            source: code.into(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// All outputs of the filter on `input` (at most `max_outputs`), or the first error it
    /// raised. Runs in the calling thread: the service calls it through the jq workers.
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, String> {
        let input: Val = serde_json::from_value(input.clone()).map_err(|e| e.to_string())?;
        self.run_val(input, super::MAX_OUTPUTS, false)
    }

    /// [`JqFilter::run`] on a jaq value, with an explicit cap on the number of outputs: past it
    /// an error, or the end when `truncate`.
    pub fn run_val(
        &self,
        input: Val,
        max_outputs: usize,
        truncate: bool,
    ) -> Result<Vec<Value>, String> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let limit = crate::model::json::max_depth();
        let mut outputs = Vec::new();
        for out in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let v = out.map_err(|e| e.to_string())?;
            if outputs.len() == max_outputs {
                return Err(format!("filter produced more than {max_outputs} outputs"));
            }
            if val_depth(&v) > limit {
                return Err(format!(
                    "an output is nested deeper than {limit} levels ([server] max_json_depth)"
                ));
            }
            outputs.push(val_to_json(&v)?);
            if truncate && outputs.len() == max_outputs {
                break;
            }
        }
        Ok(outputs)
    }
}

/// `fromjson`, refusing text nested past `[server] max_json_depth` before jaq's recursive
/// parser sees it.
fn fromjson_limited(cv: Cv<'_, Data>) -> ValXs<'_, Val> {
    let bytes = match cv.1.try_as_utf8_bytes_owned() {
        Ok(b) => b,
        Err(e) => return box_once(Err(Exn::from(e))),
    };
    let limit = crate::model::json::max_depth();
    if crate::model::json::text_depth(&bytes) > limit {
        let e = jaq_json::Error::str(format_args!(
            "fromjson: JSON nested deeper than {limit} levels ([server] max_json_depth)"
        ));
        return box_once(Err(Exn::from(e)));
    }
    let parsed: Vec<_> = jaq_json::read::parse_many(&bytes)
        .map(|r| {
            r.map_err(|e| {
                Exn::from(jaq_json::Error::str(format_args!(
                    "cannot parse {} as JSON: {e}",
                    cv.1
                )))
            })
        })
        .collect();
    Box::new(parsed.into_iter())
}

/// How deeply a jaq value nests, without recursion.
fn val_depth(v: &Val) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Val::Arr(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Val::Obj(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

fn val_to_json(v: &Val) -> Result<Value, String> {
    serde_json::from_str(&v.to_string()).map_err(|e| format!("jq output is not JSON ({e}): {v}"))
}

/// `at `…`` with the code from the error position, cut short.
fn at(pos: &str) -> String {
    let snippet: String = pos.chars().take(20).collect();
    if snippet.is_empty() {
        "at the end".into()
    } else {
        format!("at `{snippet}`")
    }
}

fn describe_load(errs: &jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut out = Vec::new();
    for (_, e) in errs {
        match e {
            Error::Io(list) => {
                out.extend(list.iter().map(|(p, m)| format!("cannot load `{p}`: {m}")))
            }
            Error::Lex(list) => out.extend(
                list.iter()
                    .map(|(expect, pos)| format!("expected {} {}", expect.as_str(), at(pos))),
            ),
            Error::Parse(list) => out.extend(
                list.iter()
                    .map(|(expect, pos)| format!("expected {} {}", expect.as_str(), at(pos))),
            ),
        }
    }
    out.join("; ")
}

fn describe_compile(errs: &jaq_core::compile::Errors<&str, ()>) -> String {
    errs.iter()
        .flat_map(|(_, list)| list.iter())
        .map(|(name, undefined)| format!("undefined {} `{name}`", undefined.as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fromjson_refuses_deep_text_and_parses_the_rest() {
        let f = JqFilter::compile(".s | fromjson").unwrap();
        assert_eq!(
            f.run(&json!({"s": "[1, {\"a\": 2}]"})).unwrap(),
            vec![json!([1, {"a": 2}])]
        );
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let e = f.run(&json!({ "s": deep })).unwrap_err();
        assert!(e.contains("max_json_depth"), "{e}");
        assert!(f
            .run(&json!({"s": "{"}))
            .unwrap_err()
            .contains("cannot parse"));
    }

    #[test]
    fn outputs_built_past_the_depth_limit_are_refused() {
        let f = JqFilter::compile("reduce range(100) as $i (0; [.])").unwrap();
        assert!(f.run(&json!(null)).unwrap_err().contains("max_json_depth"));
    }
}
