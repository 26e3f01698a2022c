//! Loading, overriding and validating settings.

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn empty_text_gives_defaults() {
    let s = parse("", &HashMap::new()).unwrap();
    assert_eq!(s.server.listen, DEFAULT_LISTEN);
    assert_eq!(s.upstream.base_url, DEFAULT_BASE_URL);
    assert_eq!(s.merchants.header, DEFAULT_MERCHANT_HEADER);
    assert!(!s.oauth.is_configured());
    assert!(s.oauth_setup_hint().unwrap().contains("oauth.client_id"));
}

#[test]
fn env_overrides_file() {
    let s = parse(
        "[oauth]\nclient_id = \"app_file\"\ntoken_timeout_ms = 100\n",
        &env(&[
            ("MOLLIE_GATEWAY__OAUTH__CLIENT_ID", "app_env"),
            ("MOLLIE_GATEWAY__OAUTH__CLIENT_SECRET", "12345"),
            ("MOLLIE_GATEWAY__UPSTREAM__READ_TIMEOUT_MS", "1500"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(s.oauth.client_id, "app_env");
    assert_eq!(s.oauth.client_secret.expose(), "12345");
    assert_eq!(s.oauth.token_timeout_ms, 100);
    assert_eq!(s.upstream.read_timeout_ms, 1500);
}

#[test]
fn unknown_keys_and_sections_are_rejected_all_at_once() {
    let err = parse(
        "[server]\nlisen = \"x\"\n[oauth]\nclient_idd = \"a\"\n[bogus]\na = 1\n",
        &HashMap::new(),
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    assert_eq!(err.problems.len(), 3, "{all}");
    assert!(all.contains("lisen"), "{all}");
    assert!(all.contains("client_idd"), "{all}");
    assert!(all.contains("[bogus]"), "{all}");
}

#[test]
fn every_semantic_problem_is_reported() {
    let err = parse(
        "[server]\nlisten = \"nope\"\nthreads = 0\n[upstream]\nbase_url = \"ftp://x\"\n\
         [oauth]\nclient_secret = \"s\"\n",
        &HashMap::new(),
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    assert!(all.contains("server.listen"), "{all}");
    assert!(all.contains("server.threads"), "{all}");
    assert!(all.contains("upstream.base_url"), "{all}");
    assert!(all.contains("oauth.client_id is missing"), "{all}");
}

#[test]
fn listeners_may_share_port_0_but_no_other_address() {
    let both = |addr: &str| {
        let server = format!("[server]\nlisten = \"{addr}\"\nadmin_listen = \"{addr}\"\n");
        parse(&server, &HashMap::new()).map(|s| s.server.listen)
    };
    assert_eq!(both("127.0.0.1:0").unwrap(), "127.0.0.1:0");
    let err = both("127.0.0.1:8080").unwrap_err().problems.join("\n");
    assert!(err.contains("server.admin_listen must differ"), "{err}");
    let oauth = |addr: &str| {
        let server = format!("[server]\noauth_listen = \"{addr}\"\n");
        parse(&server, &HashMap::new()).map(|s| s.server.oauth_listen)
    };
    assert_eq!(oauth("127.0.0.1:8443").unwrap(), "127.0.0.1:8443");
    let err = oauth("127.0.0.1:9090").unwrap_err().to_string();
    assert!(err.contains("server.oauth_listen must differ"), "{err}");
    let err = oauth("nowhere").unwrap_err().to_string();
    assert!(err.contains("server.oauth_listen"), "{err}");
}

#[test]
fn secret_file_is_read_and_masked() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, "s3cr3t-from-file\n").unwrap();
    let s = parse(
        &format!(
            "[oauth]\nclient_id = \"app_x\"\nclient_secret_file = {:?}\n",
            f.display().to_string()
        ),
        &HashMap::new(),
    )
    .unwrap();
    assert_eq!(s.oauth.client_secret.expose(), "s3cr3t-from-file");
    let shown = s.to_masked_toml();
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("client_secret = \"***\""), "{shown}");
    assert!(!format!("{s:?}").contains("s3cr3t"));
}

#[test]
fn admin_token_file_is_one_source() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("admin");
    std::fs::write(&f, "  admin-from-file-123  \n").unwrap();
    let file = format!("[admin]\ntoken_file = {:?}\n", f.display().to_string());
    let s = parse(&file, &HashMap::new()).unwrap();
    assert_eq!(s.admin.token.expose(), "admin-from-file-123");
    let shown = s.to_masked_toml();
    assert!(!shown.contains("admin-from-file"), "{shown}");
    let both = env(&[("MOLLIE_GATEWAY__ADMIN__TOKEN", "admin-from-env-456")]);
    let err = parse(&file, &both).unwrap_err().to_string();
    assert!(
        err.contains("set only one of admin.token and admin.token_file"),
        "{err}"
    );
    assert!(!err.contains("admin-from"), "{err}");
    std::fs::write(&f, "\n").unwrap();
    let err = parse(&file, &HashMap::new()).unwrap_err().to_string();
    assert!(
        err.contains("admin.token_file") && err.contains("is empty"),
        "{err}"
    );
}

#[test]
fn missing_secret_file_is_named() {
    let err = parse(
        "[oauth]\nclient_id = \"a\"\nclient_secret_file = \"/nonexistent/s\"\n",
        &HashMap::new(),
    )
    .unwrap_err();
    assert!(err.problems[0].contains("oauth.client_secret_file"));
}

/// The environment of a deployment that mounted the key file a config names (a file that
/// does not exist here): a real key file in a temporary directory, through the env.
fn mounted_key_file(config: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(config).unwrap();
    let named = text
        .lines()
        .any(|l| l.starts_with("encryption_key_file = \"/"));
    if !named {
        return HashMap::new();
    }
    let dir = std::env::temp_dir().join(format!("conf-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("store-keys");
    std::fs::write(&file, "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    let key = "MOLLIE_GATEWAY__STORE__ENCRYPTION_KEY_FILE".to_string();
    HashMap::from([(key, file.display().to_string())])
}

#[test]
fn every_file_in_conf_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    // production.toml reads the admin token from a mounted file: point it at one.
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("admin-token");
    std::fs::write(&token, "admin-token-0123456789\n").unwrap();
    // replicas.toml (Redis) reads the OAuth state secret from a mounted file too.
    let state = secrets.path().join("state-secret");
    std::fs::write(&state, "state-secret-0123456789\n").unwrap();
    let env = HashMap::from([
        (
            "MOLLIE_GATEWAY__ADMIN__TOKEN_FILE".to_string(),
            token.display().to_string(),
        ),
        (
            "MOLLIE_GATEWAY__OAUTH__STATE_SECRET_FILE".to_string(),
            state.display().to_string(),
        ),
    ]);
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let mut env = env.clone();
            env.extend(mounted_key_file(&path));
            let s = load(Some(&path), &env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(s.0.admin.token.expose(), "admin-token-0123456789");
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn the_connection_limits_are_checked() {
    let s = parse("", &HashMap::new()).unwrap();
    assert_eq!(s.server.header_timeout_ms, DEFAULT_HEADER_TIMEOUT_MS);
    assert_eq!(s.server.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(s.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(s.server.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
    let err = parse(
        "[server]\nheader_timeout_ms = 0\nmax_connections = 0\nmax_body_bytes = 0\n\
         max_header_bytes = 1048576\n",
        &HashMap::new(),
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    assert_eq!(err.problems.len(), 4, "{all}");
    for key in [
        "server.header_timeout_ms",
        "server.max_connections",
        "server.max_body_bytes",
        "server.max_header_bytes",
    ] {
        assert!(all.contains(key), "{all}");
    }
}

#[test]
fn the_redis_store_is_checked_and_its_password_masked() {
    let ok = "[oauth]\nstate_secret = \"s3\"\n[store]\nbackend = \"redis\"\nredis_url = \"redis://u:hunter2@h:6379/0\"\n";
    let s = parse(ok, &HashMap::new()).unwrap();
    assert_eq!(s.store.backend, StoreBackend::Redis);
    let shown = s.to_masked_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redis://u:***@h:6379/0"), "{shown}");
    let bad =
        "[oauth]\nstate_secret = \"s3\"\n[store]\nbackend = \"redis\"\nredis_url = \"http://x:secret@h\"\nkey_prefix = \"\"\n";
    let err = parse(bad, &HashMap::new()).unwrap_err();
    let all = err.problems.join("\n");
    assert!(all.contains("store.redis_url"), "{all}");
    assert!(all.contains("store.key_prefix"), "{all}");
    assert!(!all.contains("secret"), "the URL is not repeated: {all}");
    let tls = "[oauth]\nstate_secret = \"s3\"\n[store]\nbackend = \"redis\"\nredis_url = \"rediss://u:hunter2@h:6380\"\n";
    parse(tls, &HashMap::new()).unwrap();
    let insecure = "[oauth]\nstate_secret = \"s3\"\n[store]\nbackend = \"redis\"\nredis_url = \"rediss://h:6380#insecure\"\n";
    let err = parse(insecure, &HashMap::new()).unwrap_err();
    assert!(err.problems[0].contains("#insecure"), "{:?}", err.problems);
}

#[test]
fn the_redis_ca_file_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.txt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    for (url, ca, expected) in [
        ("rediss://h:6380", &not_pem, "holds no PEM certificate"),
        ("rediss://h:6380", &missing, "cannot be read"),
        ("redis://u:hunter2@h:6380", &not_pem, "not a rediss:// URL"),
    ] {
        let toml = format!(
            "[oauth]\nstate_secret = \"s3\"\n[store]\nbackend = \"redis\"\nredis_url = {url:?}\nredis_ca_file = {:?}\n",
            ca.display().to_string()
        );
        let all = parse(&toml, &HashMap::new())
            .unwrap_err()
            .problems
            .join("\n");
        assert!(all.contains("store.redis_ca_file"), "{all}");
        assert!(all.contains(expected), "{all}");
        assert!(!all.contains("hunter2"), "{all}");
    }
}

#[test]
fn a_redis_url_that_does_not_parse_is_refused_naming_the_key_not_the_url() {
    for url in [
        "redis://u:hunter2@h:6379/notadb",
        "redis://u:hunter2@0.0.0.0:6379",
        "redis+unix:///tmp/r.sock?db=x&pass=hunter2",
        "not a url hunter2",
        "redis://u:hunter2@h:99999",
    ] {
        let toml = format!(
            "[oauth]\nstate_secret = \"s3\"\n[store]\nbackend = \"redis\"\nredis_url = {url:?}\n"
        );
        let err = parse(&toml, &HashMap::new()).unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("store.redis_url"), "{url}: {all}");
        assert!(
            !all.contains("hunter2"),
            "the password is not repeated: {all}"
        );
    }
}

#[test]
fn the_redis_backend_takes_a_key_file_and_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    let toml = format!(
        "[oauth]\nstate_secret = \"s3\"\n[store]\nbackend = \"redis\"\nencryption_key_file = {:?}\n",
        keys.display().to_string()
    );
    let s = parse(&toml, &HashMap::new()).unwrap();
    assert_eq!(s.store.backend, StoreBackend::Redis);
    // A bad key file is refused with the redis backend as with the file backend.
    std::fs::write(&keys, "k1:short\n").unwrap();
    let err = parse(&toml, &HashMap::new())
        .unwrap_err()
        .problems
        .join("\n");
    assert!(
        err.contains("store.encryption_key_file") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn the_redis_store_requires_a_state_secret_from_the_config_the_env_or_a_file() {
    let toml = "[store]\nbackend = \"redis\"\n";
    let all = parse(toml, &HashMap::new())
        .unwrap_err()
        .problems
        .join("\n");
    assert!(all.contains("oauth.state_secret"), "{all}");
    assert!(all.contains("oauth.state_secret_file"), "{all}");
    let s = parse(
        toml,
        &env(&[("MOLLIE_GATEWAY__OAUTH__STATE_SECRET", "from-env")]),
    )
    .unwrap();
    assert_eq!(s.oauth.state_secret.expose(), "from-env");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state-secret");
    std::fs::write(&file, "from-file\n").unwrap();
    let with_file = format!(
        "[oauth]\nstate_secret_file = {:?}\n{toml}",
        file.display().to_string()
    );
    let s = parse(&with_file, &HashMap::new()).unwrap();
    assert_eq!(s.oauth.state_secret.expose(), "from-file");
    assert!(!s.to_masked_toml().contains("from-file"));
    // The file store keeps its per-process default.
    parse("", &HashMap::new()).unwrap();
}
