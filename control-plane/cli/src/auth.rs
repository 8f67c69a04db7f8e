//! `orca auth`: named tokens (the users of RBAC bindings) and `can-i`, as
//! `kubectl auth can-i` answers it (`yes` / `no`, exit status 0 / 1).

use std::io::Write;
use std::path::{Path, PathBuf};

use orca_proto::controlplane::v1 as pb;

use super::credentials::Credentials;
use super::output::{human, table};
use super::{Admin as Client, CliError};
use orca_model::time::age;

/// `orca auth ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Named tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Whether you (or, with the admin token, `--as USER`) may do VERB on
    /// RESOURCE (`pods`, `pods/exec`, `deployments`, `nodes`, ...).
    CanI {
        /// get, list, watch, create, update, patch or delete.
        verb: String,
        /// The resource, plural, with subresource.
        resource: String,
        /// One object's name.
        name: Option<String>,
        /// Ask for this user.
        #[arg(long = "as")]
        user: Option<String>,
    },
}

/// `orca auth token ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token for user NAME; prints it (shown once).
    Create {
        /// The user's name.
        name: String,
        /// Also write a credentials file for it (this file's server and CA).
        #[arg(long)]
        credentials: Option<PathBuf>,
    },
    /// List the named tokens.
    List,
    /// Delete a named token.
    Delete {
        /// The user's name.
        name: String,
    },
}

/// Runs an `orca auth` command; its exit status.
pub async fn run(
    client: &mut Client,
    cmd: AuthCommand,
    ns: &str,
    config: Option<&Path>,
    out: &mut impl Write,
) -> Result<i32, CliError> {
    match cmd {
        AuthCommand::Token(TokenCommand::Create { name, credentials }) => {
            let made = client
                .create_token(pb::CreateTokenRequest { name })
                .await?
                .into_inner();
            if let Some(path) = credentials {
                let mine = config
                    .map(Path::to_owned)
                    .or_else(Credentials::default_path)
                    .ok_or_else(|| {
                        CliError::Credentials(
                            "no credentials file to copy the server and CA from".into(),
                        )
                    })?;
                let mut creds =
                    Credentials::load(&mine).map_err(|e| CliError::Credentials(e.to_string()))?;
                creds.token = made.token.clone();
                creds.write(&path)?;
                writeln!(
                    out,
                    "token/{} created; credentials written to {}",
                    made.name,
                    path.display()
                )?;
            } else {
                writeln!(out, "{}", made.token)?;
            }
        }
        AuthCommand::Token(TokenCommand::List) => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let mut rows = vec![vec!["NAME".to_owned(), "AGE".to_owned()]];
            for t in tokens {
                rows.push(vec![t.name, human(age(t.created_at.as_ref()))]);
            }
            table(out, &rows)?;
        }
        AuthCommand::Token(TokenCommand::Delete { name }) => {
            client
                .delete_token(pb::DeleteTokenRequest { name: name.clone() })
                .await?;
            writeln!(out, "token/{name} deleted")?;
        }
        AuthCommand::CanI {
            verb,
            resource,
            name,
            user,
        } => {
            let answer = client
                .can_i(pb::CanIRequest {
                    verb,
                    resource,
                    namespace: ns.to_owned(),
                    name: name.unwrap_or_default(),
                    user: user.unwrap_or_default(),
                })
                .await?
                .into_inner();
            writeln!(out, "{}", if answer.allowed { "yes" } else { "no" })?;
            eprintln!("{}", answer.reason);
            return Ok(if answer.allowed { 0 } else { 1 });
        }
    }
    Ok(0)
}
