package debian

var (
	RepoURIs  = repoURIs
	ArchiveOf = archiveOf
)
