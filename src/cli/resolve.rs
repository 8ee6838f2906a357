//! `edgeflag resolve`: one request on stdin, one response on stdout.

use super::{load_materializations, load_state, read_request, CliError, Io, ResolveArgs};
use crate::api;
use crate::resolve::{self, sticky::Sticky, Request};

pub(super) fn run(args: &ResolveArgs, io: &mut Io<'_>) -> Result<u8, CliError> {
    let snap = load_state(&args.state)?;
    let sticky = load_materializations(args.materializations.as_deref())?;
    let req = read_request(io)?;
    let ctx = req.evaluation_context.clone().unwrap_or_default();
    let request = Request { flags: &req.flags, context: &ctx, client_secret: &req.client_secret };
    let res =
        resolve::resolve(&snap, &request, Sticky::Known(&sticky), None).map_err(|e| CliError::Failed(e.to_string()))?;

    let extra = if res.writes.is_empty() {
        None
    } else {
        let writes = serde_json::to_string(&res.writes)
            .map_err(|e| CliError::Failed(format!("cannot write materializationsToWrite: {e}")))?;
        Some(format!("\"materializationsToWrite\":{writes}"))
    };
    let mut out = Vec::new();
    api::write_resolve_response(&mut out, &res, &new_resolve_id()?, None, extra.as_deref());
    if args.pretty {
        out = pretty(&out);
    }
    out.push(b'\n');
    io.stdout.write_all(&out)?;
    Ok(0)
}

fn new_resolve_id() -> Result<String, CliError> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| CliError::Failed(format!("no randomness for a resolve id: {e}")))?;
    Ok(api::resolve_id_from(&random))
}

/// Re-indents compact JSON without reordering keys (a round trip through
/// `serde_json::Value` would sort them). Input is our own well-formed output.
fn pretty(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', depth * 2));
    };
    let mut bytes = json.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
            }
            b'{' | b'[' => {
                out.push(b);
                let close = if b == b'{' { b'}' } else { b']' };
                if bytes.peek() == Some(&close) {
                    // Keep empty containers on one line.
                    out.push(close);
                    bytes.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(b);
            }
            b',' => {
                out.push(b);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            b if b.is_ascii_whitespace() => {}
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::pretty;

    #[test]
    fn pretty_keeps_order_and_meaning() {
        let compact = br#"{"b":[1,{"x":"a,\"}{:"}],"a":{},"c":[],"d":{"e":null}}"#;
        let p = pretty(compact);
        let text = String::from_utf8(p.clone()).unwrap();
        assert!(text.find("\"b\"").unwrap() < text.find("\"a\"").unwrap(), "{text}");
        assert!(text.contains("\"a\": {}") && text.contains("\"c\": []"), "{text}");
        let a: serde_json::Value = serde_json::from_slice(compact).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(a, b);
    }
}
