//! Which program a URL path runs: the one COMMAND, or with `--dir` the executable the path
//! names, never anything outside the directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cgi_env::{percent_decode, ScriptPath};
use crate::config::{is_executable_file, Config, Program};

/// A resolved route.
#[derive(Debug, Clone)]
pub struct Route {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub script: ScriptPath,
}

/// Why a path has no program.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No such script, a directory, or a path that would leave `--dir` (404, as websocketd).
    #[error("script not found")]
    NotFound,
    /// The file exists but cannot be executed (403).
    #[error("script is not executable")]
    NotExecutable,
}

/// Resolves the request path (as received, percent-encoded) to a program.
pub fn resolve(config: &Config, raw_path: &str) -> Result<Route, RouteError> {
    let path = percent_decode(raw_path);
    match &config.program {
        Program::Command {
            path: program,
            args,
        } => Ok(Route {
            program: program.clone(),
            args: args.clone(),
            script: ScriptPath {
                script_name: "/".into(),
                path_info: path,
            },
        }),
        Program::Dir(dir) => resolve_in_dir(dir, &path),
        Program::None => Err(RouteError::NotFound),
    }
}

fn resolve_in_dir(dir: &Path, path: &str) -> Result<Route, RouteError> {
    let rel = path.strip_prefix('/').ok_or(RouteError::NotFound)?;
    let parts: Vec<&str> = rel.split('/').collect();
    // Decoding happened first, so an encoded "%2e%2e" or "%2f" is checked here too.
    if parts
        .iter()
        .any(|p| *p == ".." || *p == "." || p.contains('\0'))
    {
        return Err(RouteError::NotFound);
    }
    let mut script_name = String::new();
    for (i, part) in parts.iter().enumerate() {
        script_name.push('/');
        script_name.push_str(part);
        let file = dir.join(&script_name[1..]);
        let meta = std::fs::metadata(&file).map_err(|_| RouteError::NotFound)?;
        let last = i == parts.len() - 1;
        if meta.is_dir() {
            if last {
                return Err(RouteError::NotFound);
            }
            continue;
        }
        // Symlinks may point anywhere inside the directory, never outside it.
        let real = std::fs::canonicalize(&file).map_err(|_| RouteError::NotFound)?;
        if !real.starts_with(dir) {
            return Err(RouteError::NotFound);
        }
        if !is_executable_file(&real) {
            return Err(RouteError::NotExecutable);
        }
        let path_info = if last {
            String::new()
        } else {
            format!("/{}", parts[i + 1..].join("/"))
        };
        return Ok(Route {
            program: file,
            args: Vec::new(),
            script: ScriptPath {
                script_name,
                path_info,
            },
        });
    }
    Err(RouteError::NotFound)
}
