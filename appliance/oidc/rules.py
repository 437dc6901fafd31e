"""Who may sign in: Headscale's allowed_groups, allowed_domains, allowed_users and
email_verified_required, in Headscale's order, plus GitHub's allowed organisations. Each refusal
says in words a person understands what was wrong."""

from __future__ import annotations

from dataclasses import dataclass

from .provider import Identity
from .settings import OIDCSettings


@dataclass(frozen=True)
class Refusal(Exception):
    """A sign-in that must not go through: ``kind`` for logs and tests, ``text`` for the person."""

    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


def check_allowed(s: OIDCSettings, who: Identity) -> None:
    """Raises Refusal unless ``who`` may sign in."""
    if s.allowed_organizations and not set(s.allowed_organizations) & set(who.organizations):
        raise Refusal("organization", "Your GitHub account is not a member of an organisation allowed to "
                                      "join this tailnet.")
    if s.allowed_groups and not set(s.allowed_groups) & set(who.groups):
        raise Refusal("group", "Your account is not in a group allowed to join this tailnet.")
    trust_email = who.email_verified or not s.email_verified_required
    if (s.allowed_domains or s.allowed_users) and not trust_email:
        raise Refusal("unverified-email", "Your email address is not verified with your identity provider. "
                                          "Verify it there, then sign in again.")
    if s.allowed_domains:
        domain = who.email.rpartition("@")[2].lower() if "@" in who.email else ""
        if domain not in s.allowed_domains:
            raise Refusal("domain", "Accounts of your email domain are not allowed to join this tailnet.")
    if s.allowed_users and who.email not in s.allowed_users:
        raise Refusal("user", "Your account is not on the list of people allowed to join this tailnet.")
