//! Argv: secrets passed as flag values, which free-text patterns cannot see when the flag and
//! its value are two separate arguments.

use crate::Redactor;

/// Flag names (without leading dashes, lowercase) whose value is a secret.
const SECRET_FLAG_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "passphrase",
    "token",
    "secret",
    "api-key",
    "api_key",
    "apikey",
    "access-token",
    "auth-token",
    "client-secret",
    "secret-key",
    "secret-access-key",
    "bearer",
];

/// Suffixes that make a flag a secret one (`--db-password`, `--github-token`).
const SECRET_FLAG_SUFFIXES: &[&str] = &[
    "-password",
    "_password",
    "-passwd",
    "-passphrase",
    "-token",
    "_token",
    "-secret",
    "_secret",
    "-api-key",
    "_api_key",
    "-apikey",
];

/// Prefixes of boolean flags that merely mention a secret (`--no-password`, `--ask-pass`).
const NOT_A_VALUE_PREFIXES: &[&str] = &["no-", "ask-", "prompt-", "use-", "require-", "skip-"];

#[derive(Clone, Copy)]
enum ValueShape {
    /// The whole value is the secret.
    Whole,
    /// `user:password`: keep the user, mask what follows the first colon.
    UserPassword,
}

/// Short flags that carry a secret only for particular programs (`-p` is a port for ssh).
fn program_flags(program: &str) -> &'static [(&'static str, ValueShape)] {
    match program {
        "sshpass" => &[("-p", ValueShape::Whole)],
        "mysql" | "mysqldump" | "mysqladmin" | "mysqlimport" | "mysqlshow" | "mysqlcheck"
        | "mariadb" | "mariadb-dump" | "mariadb-admin" => &[("-p", ValueShape::Whole)],
        "redis-cli" | "valkey-cli" => &[("-a", ValueShape::Whole)],
        "curl" => &[
            ("-u", ValueShape::UserPassword),
            ("--user", ValueShape::UserPassword),
            ("-U", ValueShape::UserPassword),
            ("--proxy-user", ValueShape::UserPassword),
        ],
        _ => &[],
    }
}

fn is_secret_flag(redactor: &Redactor, flag: &str) -> bool {
    if redactor.inner.secret_flags.iter().any(|f| f == flag) {
        return true;
    }
    let Some(name) = flag.strip_prefix("--") else {
        return false;
    };
    let name = name.to_ascii_lowercase();
    if NOT_A_VALUE_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    SECRET_FLAG_NAMES.contains(&name.as_str())
        || SECRET_FLAG_SUFFIXES.iter().any(|s| name.ends_with(s))
}

fn mask_value(redactor: &Redactor, value: &str, shape: ValueShape) -> String {
    if value.is_empty() || redactor.is_token(value) {
        return value.to_owned();
    }
    match shape {
        ValueShape::Whole => {
            let out = redactor.redact(value);
            let one_finding_covers_all = matches!(
                out.findings.as_slice(),
                [only] if only.start == 0 && only.end == value.len()
            );
            if one_finding_covers_all {
                out.text
            } else {
                "[SECRET]".to_owned()
            }
        }
        ValueShape::UserPassword => match value.split_once(':') {
            Some((user, password)) => format!(
                "{}:{}",
                redactor.redact(user).text,
                mask_value(redactor, password, ValueShape::Whole)
            ),
            None => redactor.redact(value).text,
        },
    }
}

pub(crate) fn redact_args(redactor: &Redactor, args: &[String]) -> Vec<String> {
    let program = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or_default();
    let short_flags = program_flags(program);
    let mut out = Vec::with_capacity(args.len());
    let mut value_of_previous: Option<ValueShape> = None;
    for (index, arg) in args.iter().enumerate() {
        if let Some(shape) = value_of_previous.take() {
            if !arg.starts_with("--") {
                out.push(mask_value(redactor, arg, shape));
                continue;
            }
        }
        if index == 0 {
            out.push(redactor.redact(arg).text);
            continue;
        }
        if let Some((flag, value)) = arg.split_once('=') {
            if flag.starts_with('-') && is_secret_flag(redactor, flag) {
                out.push(format!(
                    "{flag}={}",
                    mask_value(redactor, value, ValueShape::Whole)
                ));
                continue;
            }
            if let Some(&(_, shape)) = short_flags
                .iter()
                .find(|(f, _)| f.starts_with("--") && *f == flag)
            {
                out.push(format!("{flag}={}", mask_value(redactor, value, shape)));
                continue;
            }
        }
        if is_secret_flag(redactor, arg) {
            out.push(arg.clone());
            value_of_previous = Some(ValueShape::Whole);
            continue;
        }
        if let Some(&(_, shape)) = short_flags.iter().find(|(f, _)| f == arg) {
            out.push(arg.clone());
            value_of_previous = Some(shape);
            continue;
        }
        let attached = short_flags.iter().find(|(f, _)| {
            f.len() == 2 && arg.len() > 2 && arg.starts_with(f) && !arg.starts_with("--")
        });
        if let Some(&(flag, shape)) = attached {
            out.push(format!(
                "{flag}{}",
                mask_value(redactor, &arg[flag.len()..], shape)
            ));
            continue;
        }
        out.push(redactor.redact(arg).text);
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{RedactConfig, Redactor};

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    fn redact(words: &[&str]) -> Vec<String> {
        match Redactor::new(&RedactConfig::default()) {
            Ok(r) => r.redact_args(&argv(words)),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn separate_flag_values_are_masked() {
        assert_eq!(
            redact(&[
                "deploy",
                "--password",
                "hunter2",
                "--db-password",
                "pw",
                "--verbose"
            ]),
            argv(&[
                "deploy",
                "--password",
                "[SECRET]",
                "--db-password",
                "[SECRET]",
                "--verbose"
            ])
        );
    }

    #[test]
    fn attached_flag_values_are_masked_and_specific_tokens_kept() {
        let token = format!("ghp_{}", "a1B2".repeat(9));
        let attached = format!("--token={token}");
        assert_eq!(
            redact(&["gh", attached.as_str(), "--token", token.as_str()]),
            argv(&["gh", "--token=[GITHUB_TOKEN]", "--token", "[GITHUB_TOKEN]"])
        );
    }

    #[test]
    fn short_flags_depend_on_the_program() {
        assert_eq!(
            redact(&["sshpass", "-p", "s3cr3t", "ssh", "host"]),
            argv(&["sshpass", "-p", "[SECRET]", "ssh", "host"])
        );
        assert_eq!(
            redact(&["/usr/bin/mysql", "-pS3cret", "db"]),
            argv(&["/usr/bin/mysql", "-p[SECRET]", "db"])
        );
        assert_eq!(
            redact(&["ssh", "-p", "2222", "host"]),
            argv(&["ssh", "-p", "2222", "host"])
        );
        assert_eq!(
            redact(&["docker", "run", "-p", "8080:80", "img"]),
            argv(&["docker", "run", "-p", "8080:80", "img"])
        );
        assert_eq!(
            redact(&["curl", "-u", "alice:pw", "https://x.test"]),
            argv(&["curl", "-u", "alice:[SECRET]", "https://x.test"])
        );
    }

    #[test]
    fn flags_that_only_mention_a_secret_take_no_value() {
        assert_eq!(
            redact(&[
                "tool",
                "--no-password",
                "run",
                "--password-file",
                "/etc/pw",
                "--max-tokens",
                "512"
            ]),
            argv(&[
                "tool",
                "--no-password",
                "run",
                "--password-file",
                "/etc/pw",
                "--max-tokens",
                "512"
            ])
        );
        assert_eq!(
            redact(&["tool", "--password"]),
            argv(&["tool", "--password"])
        );
        assert_eq!(
            redact(&["tool", "--password", "--force"]),
            argv(&["tool", "--password", "--force"])
        );
    }

    #[test]
    fn configured_secret_flags_are_honoured() {
        let config = RedactConfig {
            secret_flags: vec!["-K".into()],
            ..RedactConfig::default()
        };
        let out = Redactor::new(&config).map(|r| r.redact_args(&argv(&["vault", "-K", "abc"])));
        assert_eq!(out.ok(), Some(argv(&["vault", "-K", "[SECRET]"])));
    }
}
