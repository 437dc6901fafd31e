"""Sign-in for people through an identity provider: OpenID Connect (discovery, authorization
code flow with state, nonce and PKCE, ID token verification against the provider's keys,
UserInfo), and GitHub's OAuth 2.0 with its user, email and organisation APIs."""
