-- wrk script: POST /oauth2/token with the client_credentials grant.
-- AUTH is the whole Authorization header value ("Basic ...").
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("AUTH")
