package debian

var RepoURIs = repoURIs
