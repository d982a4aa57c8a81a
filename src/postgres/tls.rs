//! TLS as libpq does it: `sslmode` (disable, allow, prefer, require, verify-ca, verify-full;
//! default prefer) and `sslrootcert`, from the URL or `PGSSLMODE` / `PGSSLROOTCERT`. As in libpq,
//! `require` with a root certificate verifies the chain like verify-ca; verify-ca checks the
//! chain, verify-full the chain and the host name. Without `sslrootcert`, verification uses the
//! Mozilla roots (webpki-roots). The same settings serve the replication session.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::refused(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                )))
            }
        })
    }
}

/// How to speak TLS to the server.
#[derive(Clone, Debug)]
pub struct PgTls {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

impl PgTls {
    /// Take `sslmode` and `sslrootcert` out of a postgres:// URL (the URL parser knows only
    /// some of libpq's values); returns the settings and the URL without them.
    pub fn from_url(dsn: &str) -> Result<(Self, String)> {
        let (base, query) = dsn.split_once('?').unwrap_or((dsn, ""));
        let mut mode = None;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.to_string()),
                Some(("sslrootcert", v)) => root_cert = Some(PathBuf::from(v)),
                _ => rest.push(pair),
            }
        }
        let mode = mode.or_else(|| std::env::var("PGSSLMODE").ok());
        let root_cert = root_cert.or_else(|| std::env::var_os("PGSSLROOTCERT").map(PathBuf::from));
        let mut mode = SslMode::parse(mode.as_deref().unwrap_or("prefer"))?;
        if mode == SslMode::Require && root_cert.is_some() {
            mode = SslMode::VerifyCa; // libpq: a root certificate means verify
        }
        let url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Ok((PgTls { mode, root_cert }, url))
    }

    /// The rustls configuration for this mode (None: no TLS at all).
    pub fn client_config(&self) -> Result<Option<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::refused(format!("TLS setup: {e}")))?;
        let config = match self.mode {
            SslMode::Disable => return Ok(None),
            SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa => {
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), provider)
                        .build()
                        .map_err(|e| Error::refused(format!("TLS setup: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyHostName(inner)))
                    .with_no_client_auth()
            }
            SslMode::VerifyFull => builder
                .with_root_certificates(self.roots()?)
                .with_no_client_auth(),
        };
        Ok(Some(config))
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        Error::refused(format!(
                            "sslrootcert {}: cannot read certificates from it ({e})",
                            path.display()
                        ))
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(Error::refused(format!(
                        "sslrootcert {} holds no usable certificate",
                        path.display()
                    )));
                }
            }
        }
        Ok(roots)
    }

    /// The replication session's settings for the same mode, connecting to `host`.
    pub fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::config::SslMode as R;
        let mode = match self.mode {
            SslMode::Disable => R::Disable,
            SslMode::Prefer => R::Prefer,
            SslMode::Require => R::Require,
            SslMode::VerifyCa => R::VerifyCa,
            SslMode::VerifyFull => R::VerifyFull,
        };
        pgwire_replication::TlsConfig {
            mode,
            ca_pem_path: self.root_cert.clone(),
            // The library refuses verify-full for an IP address unless told the name to check;
            // rustls then checks the address against the certificate's IP entries.
            sni_hostname: (self.mode == SslMode::VerifyFull
                && host.parse::<std::net::IpAddr>().is_ok())
            .then(|| host.to_string()),
            ..Default::default()
        }
    }
}

/// prefer and require: encrypted, the certificate not checked (libpq's meaning of the modes).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain must lead to a trusted root; the name in the certificate is not checked.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_settings_leave_the_url() {
        let (tls, url) = PgTls::from_url(
            "postgres://u@h:5432/db?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(url, "postgres://u@h:5432/db?connect_timeout=5");
        let (tls, _) =
            PgTls::from_url("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            tls.mode,
            SslMode::VerifyCa,
            "libpq: require with a root cert verifies"
        );
        let e = PgTls::from_url("postgres://u@h/db?sslmode=strict").unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
    }
}
