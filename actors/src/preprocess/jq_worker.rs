//! The jq worker process: `millgate __jq-worker <max_json_depth> <memory_limit_bytes>`.
//!
//! Reads requests from stdin and answers on stdout, one at a time, in frames of a 4-byte
//! little-endian length and a body. A request's body is a JSON header line
//! (`{"filter": "...", "max_outputs": N}`) then the event as JSON; an answer's body is
//! `{"ok": [outputs]}` or `{"err": "message"}`. Compiled filters are kept by source.
//!
//! Everything that can go wrong in a filter stays in here: a stack overflow or the memory limit
//! ends this process (the service starts another and refuses the event), a runaway filter is
//! killed by the service at its timeout, and the parent's death kills this process.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jq::JqFilter;

/// The first argument that turns the millgate binary into a jq worker.
pub const WORKER_ARG: &str = "__jq-worker";
/// The worker thread's stack: room for deep but legitimate filters.
const STACK_SIZE: usize = 64 * 1024 * 1024;
/// Compiled filters kept at most (a service has one per trigger).
const CACHE_MAX: usize = 1024;

#[derive(Serialize, Deserialize)]
pub(super) struct RequestHeader {
    pub filter: String,
    /// Outputs past this many are not computed.
    pub max_outputs: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Answer {
    Ok(Vec<Value>),
    Err(String),
}

/// Runs the worker loop until stdin closes. `args` are the arguments after [`WORKER_ARG`].
/// Returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let depth = args.first().and_then(|a| a.parse().ok());
    let memory = args.get(1).and_then(|a| a.parse::<u64>().ok());
    let (Some(depth), Some(memory)) = (depth, memory) else {
        eprintln!("usage: millgate {WORKER_ARG} <max_json_depth> <memory_limit_bytes> (started by millgate itself)");
        return 2;
    };
    crate::model::json::set_max_depth(depth);
    confine(memory);
    let worker = std::thread::Builder::new()
        .name("jq".into())
        .stack_size(STACK_SIZE)
        .spawn(serve);
    match worker.map(|t| t.join()) {
        Ok(Ok(Ok(()))) => 0,
        _ => 1,
    }
}

/// Dies with the parent, and stays under `memory` bytes of address space (plus the stack).
fn confine(memory: u64) {
    // SAFETY: plain system calls on this process with integer arguments and a local struct.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent may have died before the call above took effect.
        if libc::getppid() == 1 {
            libc::_exit(0);
        }
        let limit = memory.saturating_add(STACK_SIZE as u64 * 2);
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        libc::setrlimit(libc::RLIMIT_AS, &rl);
    }
}

fn serve() -> std::io::Result<()> {
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    let mut filters: HashMap<String, JqFilter> = HashMap::new();
    while let Some(body) = read_frame(&mut input)? {
        let answer = answer(&body, &mut filters);
        let bytes = serde_json::to_vec(&answer).unwrap_or_else(|e| {
            serde_json::to_vec(&Answer::Err(e.to_string())).unwrap_or_default()
        });
        write_frame(&mut output, &bytes)?;
        output.flush()?;
    }
    Ok(())
}

fn answer(body: &[u8], filters: &mut HashMap<String, JqFilter>) -> Answer {
    let Some(split) = body.iter().position(|b| *b == b'\n') else {
        return Answer::Err("malformed request".into());
    };
    let header: RequestHeader = match serde_json::from_slice(&body[..split]) {
        Ok(h) => h,
        Err(e) => return Answer::Err(format!("malformed request: {e}")),
    };
    let event = match jaq_json::read::parse_single(&body[split + 1..]) {
        Ok(v) => v,
        Err(e) => return Answer::Err(format!("malformed event: {e}")),
    };
    if !filters.contains_key(&header.filter) {
        if filters.len() >= CACHE_MAX {
            filters.clear();
        }
        match JqFilter::compile(&header.filter) {
            Ok(f) => {
                filters.insert(header.filter.clone(), f);
            }
            Err(e) => return Answer::Err(e),
        }
    }
    match filters.get(&header.filter) {
        Some(f) => match f.run_val(event, header.max_outputs, true) {
            Ok(outputs) => Answer::Ok(outputs),
            Err(e) => Answer::Err(e),
        },
        None => Answer::Err("filter cache".into()),
    }
}

/// One frame's body, or `None` at the end of the input.
pub(super) fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

pub(super) fn write_frame(w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    let len =
        u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame larger than 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(filter: &str, event: &Value) -> Vec<u8> {
        let mut body = serde_json::to_vec(&RequestHeader {
            filter: filter.into(),
            max_outputs: 3,
        })
        .unwrap();
        body.push(b'\n');
        body.extend(serde_json::to_vec(event).unwrap());
        body
    }

    #[test]
    fn answers_outputs_errors_and_caps() {
        let mut cache = HashMap::new();
        let ok = answer(&request(".a[]", &json!({"a": [1, 2]})), &mut cache);
        assert!(matches!(ok, Answer::Ok(v) if v == vec![json!(1), json!(2)]));
        // Outputs past the cap are not computed: `error` after the third never runs.
        let many = answer(&request("1, 2, 3, error(\"x\")", &json!(null)), &mut cache);
        assert!(matches!(many, Answer::Ok(v) if v.len() == 3));
        let bad = answer(&request(".a | (", &json!(null)), &mut cache);
        assert!(matches!(bad, Answer::Err(e) if e.contains("cannot parse")));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r).unwrap().is_none());
    }
}
