//! The placeholder grammar of a launch command (SPEC §3.2): which `{…}` is a placeholder,
//! which names the agent substitutes, and the expansion of an argv template into an argv.
//! Validation ([`super::assignment`]) and the launcher (`worker::launch`) share it, so what a
//! submit accepts is exactly what a launch expands.
//!
//! A `{…}` in a command argument whose inside looks like a name (letters, digits,
//! `_`, `.`, `-`, `:`) is a placeholder and must be one the agent substitutes, so a typo such as
//! `{prot}` is caught at submit time instead of reaching a worker's argv; any other brace (JSON
//! text, `{}`) is literal.
//!
//! Invariant: placeholder values are inserted verbatim and never rescanned, so a blob path or
//! id that contains `{` cannot inject another placeholder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Placeholders the agent substitutes in `launch.command`, besides `{blob:NAME}`.
pub const PLACEHOLDERS: [&str; 5] = ["port", "worker_id", "topology_id", "supervisor_id", "worker_dir"];

/// The placeholder names in `arg` (see the module docs for what counts as one).
pub(crate) fn placeholders(arg: &str) -> impl Iterator<Item = &str> {
    arg.match_indices('{').filter_map(move |(open, _)| placeholder_name(&arg[open + 1..]))
}

/// The one rule for what is a placeholder, shared by validation and the launcher: given the
/// text right after a `{`, the name when it is `name}` with a non-empty name of letters,
/// digits, `_ . - :`. Any other brace is literal text (JSON in an argument, `${HOME}`-like
/// strings are not touched; `${...}` is rejected by validation as an unknown placeholder only
/// when its inside is name-like).
pub fn placeholder_name(after_open: &str) -> Option<&str> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':');
    let inner = &after_open[..after_open.find('}')?];
    (!inner.is_empty() && inner.chars().all(name_char)).then_some(inner)
}

/// The values the placeholders of a launch command expand to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placeholders {
    pub port: u16,
    pub worker_id: String,
    pub topology_id: String,
    pub supervisor_id: String,
    pub worker_dir: PathBuf,
    /// Blob name → path of that blob's local copy, for `{blob:NAME}`.
    pub blobs: BTreeMap<String, PathBuf>,
}

/// Why an argv template did not expand. Every variant names the topology and the port.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExpandError {
    #[error("topology {topology} port {port}: the launch command is empty")]
    EmptyCommand { topology: String, port: u16 },
    #[error(
        "topology {topology} port {port}: unknown placeholder `{{{name}}}` in argument `{arg}`: known are {{port}}, {{worker_id}}, {{topology_id}}, {{supervisor_id}}, {{worker_dir}}, {{blob:NAME}}"
    )]
    UnknownPlaceholder { topology: String, port: u16, name: String, arg: String },
    #[error("topology {topology} port {port}: `{{blob:{name}}}` in argument `{arg}` names no blob of the assignment")]
    UnknownBlob { topology: String, port: u16, name: String, arg: String },
    #[error(
        "topology {topology} port {port}: program `{program}` is not an absolute path: start the command with `/` or `{{blob:NAME}}/`"
    )]
    RelativeProgram { topology: String, port: u16, program: String },
    #[error("topology {topology} port {port}: path {} is not valid UTF-8 and cannot become an argument", .path.display())]
    NonUtf8Path { topology: String, port: u16, path: PathBuf },
}

/// Expands the placeholders of `command` (SPEC §3.2). A placeholder may stand anywhere inside
/// an argument (`--dir={worker_dir}/data`). Only `{name}` with a name-like inside is a
/// placeholder ([`placeholder_name`], the rule validation uses); every other brace is
/// literal, and substituted values are never re-scanned. After expansion `command[0]` must be an
/// absolute path (so a worker never depends on the agent's `PATH`).
pub(crate) fn expand(command: &[String], p: &Placeholders) -> Result<Vec<String>, ExpandError> {
    let argv = command.iter().map(|arg| expand_arg(arg, p)).collect::<Result<Vec<_>, _>>()?;
    let Some(program) = argv.first() else {
        return Err(ExpandError::EmptyCommand { topology: p.topology_id.clone(), port: p.port });
    };
    if !Path::new(program).is_absolute() {
        return Err(ExpandError::RelativeProgram {
            topology: p.topology_id.clone(),
            port: p.port,
            program: program.clone(),
        });
    }
    Ok(argv)
}

fn expand_arg(arg: &str, p: &Placeholders) -> Result<String, ExpandError> {
    substitute(arg, |name| placeholder_value(name, arg, p))
}

/// `arg` with every placeholder replaced by `value(name)`, the first refusal being the error.
/// Same rule as validation ([`placeholder_name`]): other braces are literal. Values are
/// inserted verbatim and never rescanned. Launch commands and diagnostics commands
/// (`crate::diagnostics`, with placeholders of their own) both expand through this.
pub(crate) fn substitute<E>(arg: &str, mut value: impl FnMut(&str) -> Result<String, E>) -> Result<String, E> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match placeholder_name(after) {
            Some(name) => {
                out.push_str(&value(name)?);
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn placeholder_value(name: &str, arg: &str, p: &Placeholders) -> Result<String, ExpandError> {
    let path_str = |path: &Path| {
        path.to_str().map(str::to_owned).ok_or_else(|| ExpandError::NonUtf8Path {
            topology: p.topology_id.clone(),
            port: p.port,
            path: path.to_owned(),
        })
    };
    match name {
        "port" => Ok(p.port.to_string()),
        "worker_id" => Ok(p.worker_id.clone()),
        "topology_id" => Ok(p.topology_id.clone()),
        "supervisor_id" => Ok(p.supervisor_id.clone()),
        "worker_dir" => path_str(&p.worker_dir),
        _ => match name.strip_prefix("blob:") {
            Some(blob) => match p.blobs.get(blob) {
                Some(path) => path_str(path),
                None => Err(ExpandError::UnknownBlob {
                    topology: p.topology_id.clone(),
                    port: p.port,
                    name: blob.to_owned(),
                    arg: arg.to_owned(),
                }),
            },
            None => Err(ExpandError::UnknownPlaceholder {
                topology: p.topology_id.clone(),
                port: p.port,
                name: name.to_owned(),
                arg: arg.to_owned(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Placeholders {
        Placeholders {
            port: 6700,
            worker_id: "w-1".into(),
            topology_id: "wordcount".into(),
            supervisor_id: "sup-9".into(),
            worker_dir: "/var/lib/gale/workers/w-1".into(),
            blobs: BTreeMap::from([("code".to_owned(), PathBuf::from("/var/lib/gale/blobs/ab12"))]),
        }
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn expands_every_placeholder_anywhere_inside_an_argument() {
        let got = expand(
            &argv(&[
                "/usr/bin/java",
                "--port={port}",
                "{worker_id}",
                "t={topology_id},s={supervisor_id}",
                "{worker_dir}/data",
                "{port}{port}",
                "plain } brace",
            ]),
            &values(),
        )
        .unwrap();
        assert_eq!(
            got,
            argv(&[
                "/usr/bin/java",
                "--port=6700",
                "w-1",
                "t=wordcount,s=sup-9",
                "/var/lib/gale/workers/w-1/data",
                "67006700",
                "plain } brace",
            ])
        );
    }

    #[test]
    fn a_blob_placeholder_may_be_the_program() {
        let got = expand(&argv(&["{blob:code}/bin/worker", "{blob:code}"]), &values()).unwrap();
        assert_eq!(got, argv(&["/var/lib/gale/blobs/ab12/bin/worker", "/var/lib/gale/blobs/ab12"]));
    }

    #[test]
    fn expanded_values_are_not_rescanned() {
        let mut p = values();
        p.worker_id = "{port}".into();
        assert_eq!(expand(&argv(&["/w", "{worker_id}"]), &p).unwrap(), argv(&["/w", "{port}"]));
    }

    #[test]
    fn an_unknown_placeholder_is_named() {
        let err = expand(&argv(&["/w", "--x={host}"]), &values()).unwrap_err();
        assert!(
            matches!(&err, ExpandError::UnknownPlaceholder { name, arg, port: 6700, .. } if name == "host" && arg == "--x={host}"),
            "{err:?}"
        );
        assert!(err.to_string().contains("`{host}`"), "{err}");
    }

    #[test]
    fn an_unknown_blob_is_named() {
        let err = expand(&argv(&["/w", "{blob:data}/x"]), &values()).unwrap_err();
        assert!(matches!(&err, ExpandError::UnknownBlob { name, .. } if name == "data"), "{err:?}");
        assert!(err.to_string().contains("{blob:data}"), "{err}");
    }

    #[test]
    fn braces_that_are_not_placeholders_are_literal() {
        // The same rule as validation: what validation lets through must launch unchanged.
        let args = ["/w", "{\"json\": {\"n\": 1}}", "{}", "{ port }", "{\"a\": 1", "x{port}y", "{{port}}"];
        let out = expand(&argv(&args), &values()).unwrap();
        let port = values().port.to_string();
        assert_eq!(out[1..5], args[1..5].iter().map(|a| a.to_string()).collect::<Vec<_>>()[..]);
        assert_eq!(out[5], format!("x{port}y"));
        assert_eq!(out[6], format!("{{{port}}}"));
    }

    #[test]
    fn the_program_must_be_absolute_after_expansion() {
        for relative in [&["java", "-jar"][..], &["./run"], &["{worker_id}/run"]] {
            let err = expand(&argv(relative), &values()).unwrap_err();
            assert!(matches!(err, ExpandError::RelativeProgram { .. }), "{relative:?}: {err:?}");
        }
        let err = expand(&[], &values()).unwrap_err();
        assert!(matches!(err, ExpandError::EmptyCommand { .. }), "{err:?}");
    }
}
