package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
)

// tokenCookie holds the token that every action's form must repeat (a double-submit
// token): a page of another origin can make a browser send the cookie but cannot read it
// to put it in the form. The token is not bound to one server process, so a console behind
// a load balancer of several instances works. Browsers' Sec-Fetch-Site and Origin headers
// are checked too (http.CrossOriginProtection).
const tokenCookie = "outbox_console_csrf"

const tokenField = "csrf"

// token returns the browser's token, setting a new one when it has none. The cookie has no
// Path: browsers then scope it to the directory of the page, which is the console's prefix.
func (c *Console) token(w http.ResponseWriter, r *http.Request) string {
	if ck, err := r.Cookie(tokenCookie); err == nil && validToken(ck.Value) {
		return ck.Value
	}
	b := make([]byte, 32)
	rand.Read(b)
	v := base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{
		Name: tokenCookie, Value: v,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	return v
}

func validToken(v string) bool {
	b, err := base64.RawURLEncoding.DecodeString(v)
	return err == nil && len(b) == 32
}

// refusal says why a POST is refused: another origin made it, or its form does not carry
// the browser's token. It is empty when the POST may go ahead.
func (c *Console) refusal(r *http.Request) string {
	if err := c.origins.Check(r); err != nil {
		return "the request came from another origin."
	}
	ck, err := r.Cookie(tokenCookie)
	if err != nil || !validToken(ck.Value) {
		return "the browser sent no console token (cookies off, or the page is stale)."
	}
	form := r.PostFormValue(tokenField)
	if subtle.ConstantTimeCompare([]byte(form), []byte(ck.Value)) != 1 {
		return "the form's token does not match the browser's."
	}
	return ""
}
