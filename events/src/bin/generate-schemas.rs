//! Writes the published contract: the JSON Schemas of every event payload into
//! `events/schemas/`, and the AsyncAPI document `events/asyncapi.yaml` that refers to them.
//!
//! `generate-schemas [DIR]` writes (default: this crate's `schemas/` folder; the AsyncAPI
//! document goes next to it); `generate-schemas --check [DIR]` only reports stale files and
//! exits 1 if there are any.
//!
//! It never overwrites a published schema with an incompatible one (see `events::compat`):
//! such a change needs a new schema version, and it says so.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = events::schema::default_dir();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                eprintln!("usage: generate-schemas [--check] [DIR]");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    match events::compat::check(&dir) {
        Ok(broken) if broken.is_empty() => {}
        Ok(broken) => {
            for (path, changes) in broken {
                for change in changes {
                    eprintln!("breaking: {}: {change}", dir.join(&path).display());
                }
            }
            eprintln!(
                "generate-schemas: published schemas may only widen; give the event a new \
                 schema version (`= N (upcast with ...)` in `event_enum!`) instead"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("generate-schemas: {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let asyncapi = dir
        .parent()
        .map_or_else(events::asyncapi::default_path, |parent| {
            parent.join("asyncapi.yaml")
        });
    let result = if check {
        events::schema::stale(&dir)
    } else {
        events::schema::write(&dir)
    };
    let result = result.and_then(|paths| {
        let mut paths: Vec<PathBuf> = paths.into_iter().map(|p| dir.join(p)).collect();
        let changed = if check {
            events::asyncapi::is_stale(&asyncapi)?
        } else {
            events::asyncapi::write(&asyncapi)?
        };
        if changed {
            paths.push(asyncapi.clone());
        }
        Ok(paths)
    });
    match result {
        Ok(paths) if check && !paths.is_empty() => {
            for path in paths {
                eprintln!("stale: {}", path.display());
            }
            ExitCode::FAILURE
        }
        Ok(paths) => {
            for path in paths {
                eprintln!(
                    "{} {}",
                    if check { "stale" } else { "wrote" },
                    path.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("generate-schemas: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
