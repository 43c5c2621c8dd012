//! roomcast gateway
