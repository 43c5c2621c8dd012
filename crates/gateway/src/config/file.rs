//! The `--config` TOML file, layered under flags and environment without touching the
//! process environment: the arguments are read once to find the file and which settings
//! a flag or a variable already gives; each file key that neither gives becomes one more
//! argument (`--<flag>=<value>`), and the whole is read again. Every value thus goes
//! through the same parser, with the same messages, wherever it comes from.

use super::types::SettingError;
use super::{Config, ConfigError};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::path::Path;

/// Why the arguments could not be read.
#[derive(Debug)]
pub(super) enum Failed {
    /// What clap reports itself (an unknown flag, `--help`, `--version`, a number that
    /// is not one).
    Clap(clap::Error),
    /// A value one of our parsers refused, or the file.
    Config(ConfigError),
}

impl From<clap::Error> for Failed {
    fn from(e: clap::Error) -> Self {
        // Our parsers' messages name the flag and say what to change: they are shown as
        // they are, like the checks across settings.
        use std::error::Error;
        if e.kind() == clap::error::ErrorKind::ValueValidation {
            if let Some(s) = e.source().and_then(|s| s.downcast_ref::<SettingError>()) {
                return Failed::Config(ConfigError::Invalid(s.to_string()));
            }
        }
        Failed::Clap(e)
    }
}

impl From<Failed> for ConfigError {
    fn from(f: Failed) -> Self {
        match f {
            Failed::Clap(e) => ConfigError::Invalid(e.to_string()),
            Failed::Config(e) => e,
        }
    }
}

/// Reads `args` (the program name first), the environment and the file they name.
pub(super) fn parse<I, T>(args: I) -> Result<Config, Failed>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = Config::command();
    let first = cmd.clone().try_get_matches_from(&args)?;
    if let Some(path) = first.get_one::<std::path::PathBuf>("config") {
        for (flag, value) in file_settings(path)? {
            let given = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.as_str()))
                .and_then(|a| first.value_source(a.get_id().as_str()));
            if matches!(
                given,
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            args.push(format!("--{flag}={value}").into());
        }
    } else {
        return Ok(Config::from_arg_matches(&first)?);
    }
    let matches = cmd.try_get_matches_from(&args)?;
    Ok(Config::from_arg_matches(&matches)?)
}

/// The file's settings as (flag, value as it would be written after the flag); a list
/// becomes its items joined by commas. An unknown key is an error.
fn file_settings(path: &Path) -> Result<Vec<(String, String)>, Failed> {
    let err = |reason: String| {
        Failed::Config(ConfigError::File {
            path: path.display().to_string(),
            reason,
        })
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(e.to_string()))?;
    let cmd = Config::command();
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let known = cmd.get_arguments().any(|a| a.get_long() == Some(&flag));
        if !known || flag == "config" {
            return Err(err(format!("unknown setting {key:?}")));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        out.push((flag, text));
    }
    Ok(out)
}
