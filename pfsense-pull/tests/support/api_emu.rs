//! Emulator of the pfSense REST API package (pfrest), for tests only: the
//! real package needs a pfSense (FreeBSD + PHP) firewall, which cannot run
//! here. It speaks real HTTPS (rustls) on 127.0.0.1 with a certificate the
//! test makes with the openssl CLI, checks the `X-API-Key` header, and
//! answers in the package's JSON envelope, or with one of the faults a
//! firewall or the proxy in front of it produces.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the emulated firewall answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with `{"code":200,"status":"ok",...,"data":"<base64 config.xml>"}`.
    Good(Vec<u8>),
    /// 502 with an nginx-style HTML page (the web GUI's PHP backend is down).
    Html502,
    /// 200 with an empty body.
    Empty200,
    /// 200 with the envelope whose base64 is cut short.
    TruncatedBase64(Vec<u8>),
    /// 200 with a raw XML document whose root is not <pfsense>.
    WrongRoot,
    /// Accept, read the request, then answer nothing for this long.
    Slow(Duration),
    /// A good reply, after this long (a fault can land in the meantime).
    Late(Duration, Vec<u8>),
}

/// A certificate authority and a server certificate for 127.0.0.1, made
/// with the openssl CLI (the firewall's self-signed certificate that the
/// tool pins with --ca-file).
pub struct Certs {
    pub dir: tempfile::TempDir,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=pfsense.invalid test CA",
            ],
            d,
        );
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            d,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
            d,
        );
        Certs { dir }
    }
    /// The CA to pin (`--ca-file`).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

pub struct ApiEmu {
    pub port: u16,
    pub reply: Arc<Mutex<Reply>>,
    pub key: String,
    /// Requests seen: (path, X-API-Key value).
    pub seen: Arc<Mutex<Vec<(String, String)>>>,
}

/// The emulated endpoint. pfrest documents no verbatim config.xml download
/// (see validate.rs in the crate), so the tool takes the whole URL and this
/// path is deliberately not one of the package's documented ones.
pub const PATH: &str = "/emulated/config-backup";

fn envelope(data_b64: &str) -> String {
    format!(
        "{{\"code\":200,\"status\":\"ok\",\"response_id\":\"SUCCESS\",\"message\":\"\",\"data\":\"{data_b64}\"}}"
    )
}

impl ApiEmu {
    pub fn start(certs: &Certs, key: &str, reply: Reply) -> ApiEmu {
        let d = certs.dir.path();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(d.join("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("certs");
        let pk = PrivateKeyDer::from_pem_file(d.join("server.key")).expect("server.key");
        let cfg = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, pk)
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let reply = Arc::new(Mutex::new(reply));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (r2, s2, k2) = (reply.clone(), seen.clone(), key.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (cfg, r, s, k) = (cfg.clone(), r2.clone(), s2.clone(), k2.clone());
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    let _ = serve(&mut tls, &r, &s, &k);
                });
            }
        });
        ApiEmu {
            port,
            reply,
            key: key.to_string(),
            seen,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{PATH}", self.port)
    }

    pub fn set(&self, r: Reply) {
        *self.reply.lock().expect("lock") = r;
    }
}

fn serve<S: std::io::Read + std::io::Write>(
    tls: &mut S,
    reply: &Mutex<Reply>,
    seen: &Mutex<Vec<(String, String)>>,
    key: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *tls);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut got_key = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((name, value)) = h.split_once(':')
            && name.eq_ignore_ascii_case("x-api-key")
        {
            got_key = value.trim().to_string();
        }
    }
    drop(reader);
    seen.lock()
        .expect("lock")
        .push((path.clone(), got_key.clone()));
    let r = reply.lock().expect("lock").clone();
    let (status, ctype, body): (&str, &str, Vec<u8>) = if got_key != key {
        (
            "401 Unauthorized",
            "application/json",
            br#"{"code":401,"status":"unauthorized","response_id":"AUTH_AUTHENTICATION_FAILED","message":"Authentication failed","data":[]}"#.to_vec(),
        )
    } else if path != PATH {
        (
            "404 Not Found",
            "application/json",
            br#"{"code":404,"status":"not found","response_id":"ENDPOINT_NOT_FOUND","message":"Endpoint not found","data":[]}"#.to_vec(),
        )
    } else {
        match r {
            Reply::Good(xml) => (
                "200 OK",
                "application/json",
                envelope(&base64::engine::general_purpose::STANDARD.encode(xml)).into_bytes(),
            ),
            Reply::Html502 => (
                "502 Bad Gateway",
                "text/html",
                b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n".to_vec(),
            ),
            Reply::Empty200 => ("200 OK", "application/json", Vec::new()),
            Reply::TruncatedBase64(xml) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(xml);
                // Cut inside a 4-character group, as a dropped connection would.
                let cut = (b64.len() * 2 / 3) / 4 * 4 + 3;
                ("200 OK", "application/json", envelope(&b64[..cut]).into_bytes())
            }
            Reply::WrongRoot => (
                "200 OK",
                "application/xml",
                b"<?xml version=\"1.0\"?>\n<opnsense><version>24.1</version></opnsense>\n".to_vec(),
            ),
            Reply::Late(d, xml) => {
                std::thread::sleep(d);
                (
                    "200 OK",
                    "application/json",
                    envelope(&base64::engine::general_purpose::STANDARD.encode(xml)).into_bytes(),
                )
            }
            Reply::Slow(d) => {
                std::thread::sleep(d);
                ("200 OK", "application/json", Vec::new())
            }
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    tls.write_all(&body)?;
    tls.flush()
}
